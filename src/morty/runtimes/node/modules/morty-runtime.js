'use strict';
/**
 * The request/response API of Morty's Node.js runtime: what `handler(request)` receives and may return.
 *
 *   const { Response } = require('morty-runtime');
 *   exports.handler = async (request) => new Response(200, { 'X-Greeting': 'yes' }, { hello: request.query.get('name') });
 *
 * A handler (sync or async) may return a `Response`; an object or array (200, JSON); a string (200, text/plain);
 * a Buffer or Uint8Array (200, application/octet-stream); or undefined/null (204, no body).
 */

class Headers {
  /** Case-insensitive, multi-valued: `get` gives the first value, `getAll` every one. */
  constructor(pairs) {
    this._pairs = pairs.map(([k, v]) => [String(k), String(v)]);
  }

  get(name, fallback = undefined) {
    const wanted = String(name).toLowerCase();
    const found = this._pairs.find(([k]) => k.toLowerCase() === wanted);
    return found === undefined ? fallback : found[1];
  }

  getAll(name) {
    const wanted = String(name).toLowerCase();
    return this._pairs.filter(([k]) => k.toLowerCase() === wanted).map(([, v]) => v);
  }

  has(name) {
    return this.get(name) !== undefined;
  }

  entries() {
    return this._pairs.slice();
  }

  toJSON() {
    const out = {};
    for (const [k, v] of this._pairs) {
      const key = k.toLowerCase();
      if (!(key in out)) out[key] = v;
    }
    return out;
  }
}

class Request {
  constructor({ method, path, query, headers, body, invocationId }) {
    this.method = method;
    this.path = path;
    this.query = query;
    this.headers = headers;
    this.body = body;
    this.invocationId = invocationId;
  }

  text() {
    return this.body.toString('utf8');
  }

  json() {
    return JSON.parse(this.text());
  }
}

class Response {
  constructor(status = 200, headers = {}, body = null) {
    if (!Number.isInteger(status) || status < 100 || status > 599) {
      throw new TypeError(`status must be an integer 100-599, not ${status}`);
    }
    this.status = status;
    this.headers = headers || {};
    this.body = body;
  }
}

module.exports = { Headers, Request, Response };
