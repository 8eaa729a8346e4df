"""Morty's Node.js runtime (Node 18, Debian bookworm's): ``server.js``, a small HTTP/1.1 server that calls the
user's ``handler(request)``, and ``modules/morty-runtime.js``, the `Request`/`Response` API handlers require.

These are JavaScript files copied into the runtime's base image (``/opt/morty/runtimes/node``); this package only
makes them findable next to the Python code. The contract with alpha is the Python runtime's: listen on
``MORTY_PORT`` once the user's module is loaded, frame output written during an invocation as
``\\x1eMORTY <invocation-id> <stream>\\x1f<line>\\n``, and take the invocation id from ``X-Morty-Invocation-Id``.
"""
