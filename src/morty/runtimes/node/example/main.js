/**
 * Example Morty function: echoes its request, as JSON.
 *
 * GET  /fn/echo-node?name=Ada      -> {"greeting": "Hello, Ada!", "method": "GET", ...}
 * POST /fn/echo-node  {"a": 1}     -> {..., "json": {"a": 1}}
 * GET  /fn/echo-node?fail=1        -> 500 (the stack is in the invocation's logs)
 */
const { Response } = require('morty-runtime');

exports.handler = async (request) => {
  if (request.query.get('fail')) throw new Error('failing on request (fail=1)');
  console.log(`echo: ${request.method} ${request.path} from invocation ${request.invocationId}`);
  const reply = {
    greeting: `Hello, ${request.query.get('name', 'world')}!`,
    method: request.method,
    path: request.path,
    query: request.query.toJSON(),
    headers: request.headers.toJSON(),
    invocation_id: request.invocationId,
  };
  if (request.body.length) {
    const json = (request.headers.get('content-type') || '').startsWith('application/json');
    reply[json ? 'json' : 'text'] = json ? request.json() : request.text();
  }
  return new Response(200, { 'X-Echo': '1' }, reply);
};
