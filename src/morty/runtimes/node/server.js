'use strict';
/**
 * Morty's Node.js runtime: a small HTTP/1.1 server calling the user's `handler(request)`.
 *
 * Environment: MORTY_PORT (8080), MORTY_HOST (0.0.0.0), MORTY_HANDLER (main.handler: file `main.js`, `.cjs` or
 * `.mjs` in MORTY_CODE_DIR, export `handler`), MORTY_CODE_DIR (/var/task), MORTY_MAX_BODY (33554432 bytes; larger
 * gets 413). Dependencies resolve from NODE_PATH (the base image points it at /opt/morty/deps/node_modules).
 *
 * The user's module is loaded before the socket listens, so "accepts connections" (alpha's readiness signal) means
 * "ready to serve". Nothing resolves a name. Output written while a handler runs (console.*, process.stdout/stderr)
 * is framed with the invocation id for alpha (AsyncLocalStorage follows promises and timers the handler starts).
 * A handler's exception gives a 500 naming only the error type and invocation; the stack goes to stderr, framed.
 */
const http = require('http');
const path = require('path');
const fs = require('fs');
const crypto = require('crypto');
const { pathToFileURL } = require('url');
const { AsyncLocalStorage } = require('async_hooks');
const { Headers, Request, Response } = require('morty-runtime');

const PORT = Number.parseInt(process.env.MORTY_PORT || '8080', 10);
const HOST = process.env.MORTY_HOST || '0.0.0.0';
const HANDLER = process.env.MORTY_HANDLER || 'main.handler';
const CODE_DIR = process.env.MORTY_CODE_DIR || '/var/task';
const MAX_BODY = Number.parseInt(process.env.MORTY_MAX_BODY || String(32 * 1024 * 1024), 10);
const INVOCATION_HEADER = 'x-morty-invocation-id';
const INVOCATION_ID = /^[A-Za-z0-9._:-]{1,128}$/;

const invocation = new AsyncLocalStorage();

function framed(stream, write) {
  return function frameWrite(chunk, encoding, callback) {
    const id = invocation.getStore();
    if (id === undefined) return write(chunk, encoding, callback);
    const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
    const lines = text.split('\n');
    if (lines[lines.length - 1] === '') lines.pop();
    const out = lines.map((line) => `\x1eMORTY ${id} ${stream}\x1f${line}\n`).join('');
    return write(out, 'utf8', typeof encoding === 'function' ? encoding : callback);
  };
}
process.stdout.write = framed('stdout', process.stdout.write.bind(process.stdout));
process.stderr.write = framed('stderr', process.stderr.write.bind(process.stderr));

async function loadHandler() {
  const dot = HANDLER.lastIndexOf('.');
  if (dot <= 0 || !/^[A-Za-z_$][\w$]*(\.[A-Za-z_$][\w$]*)+$/.test(HANDLER)) {
    throw new Error(`MORTY_HANDLER must look like module.function, not ${JSON.stringify(HANDLER)}`);
  }
  const base = path.join(CODE_DIR, HANDLER.slice(0, dot).split('.').join(path.sep));
  const file = ['.js', '.cjs', '.mjs'].map((ext) => base + ext).find((f) => fs.existsSync(f));
  if (file === undefined) throw new Error(`handler ${HANDLER}: no ${base}.js, .cjs or .mjs`);
  let module;
  try {
    module = file.endsWith('.mjs') ? await import(pathToFileURL(file).href) : require(file);
  } catch (err) {
    if (err && err.code === 'ERR_REQUIRE_ESM') module = await import(pathToFileURL(file).href);
    else throw err;
  }
  const name = HANDLER.slice(dot + 1);
  const fn = module[name] ?? (module.default && module.default[name]);
  if (typeof fn !== 'function') throw new Error(`handler ${HANDLER}: ${file} exports no function ${name}`);
  return fn;
}

function query(search) {
  const params = new URLSearchParams(search);
  return {
    get: (key, fallback = undefined) => (params.has(key) ? params.get(key) : fallback),
    getAll: (key) => params.getAll(key),
    has: (key) => params.has(key),
    keys: () => [...new Set(params.keys())],
    toJSON: () => Object.fromEntries([...new Set(params.keys())].map((k) => [k, params.getAll(k)])),
  };
}

function encode(result) {
  let status = 200;
  let headers = {};
  let body = result;
  if (result instanceof Response) ({ status, headers, body } = result);
  else if (result === undefined || result === null) status = 204;
  const out = { ...headers };
  const has = (name) => Object.keys(out).some((k) => k.toLowerCase() === name);
  let bytes;
  if (body === undefined || body === null) bytes = Buffer.alloc(0);
  else if (Buffer.isBuffer(body) || body instanceof Uint8Array) {
    bytes = Buffer.from(body);
    if (!has('content-type')) out['Content-Type'] = 'application/octet-stream';
  } else if (typeof body === 'string') {
    bytes = Buffer.from(body, 'utf8');
    if (!has('content-type')) out['Content-Type'] = 'text/plain; charset=utf-8';
  } else {
    bytes = Buffer.from(JSON.stringify(body), 'utf8');
    if (!has('content-type')) out['Content-Type'] = 'application/json';
  }
  return { status, headers: out, bytes };
}

function reply(res, id, { status, headers, bytes }) {
  res.writeHead(status, { ...headers, 'X-Morty-Invocation-Id': id, 'Content-Length': bytes.length });
  res.end(bytes);
}

async function main() {
  const handler = await loadHandler();
  const server = http.createServer((req, res) => {
    const given = req.headers[INVOCATION_HEADER] || req.headers['x-request-id'];
    const id = typeof given === 'string' && INVOCATION_ID.test(given) ? given : crypto.randomUUID().replace(/-/g, '');
    const chunks = [];
    let size = 0;
    let refused = false;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        if (!refused) {
          refused = true;
          reply(res, id, encode(new Response(413, {}, { error: `request body larger than ${MAX_BODY} bytes` })));
          req.destroy();
        }
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (refused) return;
      const url = new URL(req.url, 'http://function');
      let decoded;
      try {
        decoded = decodeURIComponent(url.pathname);
      } catch {
        decoded = url.pathname;
      }
      const pairs = [];
      for (let i = 0; i < req.rawHeaders.length; i += 2) pairs.push([req.rawHeaders[i], req.rawHeaders[i + 1]]);
      const request = new Request({
        method: req.method,
        path: decoded,
        query: query(url.search),
        headers: new Headers(pairs),
        body: Buffer.concat(chunks),
        invocationId: id,
      });
      invocation.run(id, async () => {
        let response;
        try {
          response = encode(await handler(request));
        } catch (err) {
          const name = (err && err.constructor && err.constructor.name) || typeof err;
          process.stderr.write(`${(err && err.stack) || String(err)}\n`);
          response = encode(new Response(500, {}, { error: `${name} in invocation ${id}`, invocation: id }));
        }
        reply(res, id, response);
      });
    });
  });
  server.keepAliveTimeout = 75000;
  server.listen(PORT, HOST);
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  process.stderr.write(`morty node runtime: cannot start: ${(err && err.message) || err}\n`);
  process.exit(1);
});
