"""alpha: the agent inside every function instance, and the function image's entrypoint. Standard library only.

alpha starts the language runtime as its child (in the child's own process group), reports readiness the moment the
runtime accepts TCP connections on the function port (it connects; it never sends a request, so no user code runs),
restarts a crashed runtime with backoff up to a bound, captures the runtime's stdout/stderr line by line with
timestamps and invocation ids, and stops it on SIGTERM/SIGINT. When it is PID 1 it also reaps orphaned processes
(elsewhere it asks Linux to make it a child subreaper, to the same effect).

Layout in an image: the builder copies this directory and ``runtimes/`` side by side under one root, e.g.::

    /opt/morty/alpha/{__init__,__main__,_agent,_config,_control,_logs,_process,_supervisor}.py
    /opt/morty/runtimes/python/{server,morty_runtime}.py

and sets the entrypoint to ``python3 /opt/morty/alpha/__main__.py`` (equivalently ``python3 -m alpha`` with
/opt/morty on ``sys.path``; in a checkout, ``python3 -m morty.alpha``). Modules import each other relatively, so the
directory works under any package name; nothing outside the standard library is imported.

Configuration (environment; the runtime inherits alpha's environment):

    MORTY_RUNTIME_CMD           the runtime command, split like a shell would, e.g.
                                "python3 /opt/morty/runtimes/python/server.py" (default: this interpreter running
                                ``<root>/runtimes/python/server.py``)
    MORTY_PORT                  the function port the runtime listens on (8080); alpha probes it for readiness
    MORTY_ALPHA_READY_HOST      the address probed (127.0.0.1)
    MORTY_ALPHA_READY_INTERVAL  seconds between connection attempts until ready (0.005)
    MORTY_ALPHA_HOST            the control API's address (0.0.0.0)
    MORTY_ALPHA_PORT            the control API's port (8081)
    MORTY_LOG_FILE              append every log record to this file as JSON lines (optional)
    MORTY_ALPHA_LOG_LINES       records kept in memory (10000)
    MORTY_ALPHA_ECHO            copy the runtime's output to alpha's stderr, i.e. the console (1; 0 disables)
    MORTY_ALPHA_GRACE           seconds between forwarding SIGTERM/SIGINT and SIGKILL (10)
    MORTY_ALPHA_MAX_RESTARTS    give up after this many runtime exits ... (5)
    MORTY_ALPHA_RESTART_WINDOW  ... within this many seconds (60)
    MORTY_ALPHA_BACKOFF         first restart delay in seconds, doubled per recent exit (0.1)
    MORTY_ALPHA_BACKOFF_MAX     largest restart delay (5)

Output: alpha's stdout carries exactly one line, ``MORTY-READY <ms>`` (milliseconds from alpha's start to the
runtime's first accepted connection); everything for humans (alpha's events, the echoed runtime output) goes to
stderr. Exit status: the runtime's (128 + N when signal N ended it); 2 for a configuration error.

Control API: see `._control`; log records and the invocation framing: see `._logs`.
"""
