"""Language runtimes: a small HTTP server per language that calls the user's handler, plus templates."""
