/**
 * {{name}}: a Morty function.
 *
 * Morty calls `handler(request)` once per HTTP request sent to the function (`/fn/{{name}}`).
 *
 * `request` carries the full request:
 *   request.method          "GET", "POST", ...
 *   request.path            the path, percent-decoded
 *   request.query           request.query.get("name"), request.query.getAll("tag")
 *   request.headers         case-insensitive: request.headers.get("content-type")
 *   request.body            the raw body (a Buffer); request.text() and request.json() decode it
 *   request.invocationId    this invocation's id, as shown by `morty logs`
 *
 * Return (or resolve to) a `Response(status, headers, body)`, or simply an object/array (JSON), a string, a Buffer,
 * or undefined (204). Anything logged while handling a request is kept as that invocation's log. A thrown error
 * becomes a 500 response; its stack goes to the logs, never to the caller.
 */
const { Response } = require('morty-runtime');

exports.handler = async (request) => {
  const name = request.query.get('name', 'world');
  console.log(`greeting ${name}`);
  return new Response(200, { 'Cache-Control': 'no-store' }, { message: `Hello, ${name}!` });
};
