"""stasis code interpreter: the HTTP server on port 49999 of a
stasis/code-interpreter sandbox.

It speaks what E2B's @e2b/code-interpreter SDK calls (POST /execute streaming
one JSON object per line; /contexts to create, list, restart and remove
contexts; /health) and runs the code in Jupyter kernels, one per context,
through jupyter_client. Only the Python standard library and Debian's
python3-jupyter-client are used.

Each context has a worker thread that owns its kernel and its client (the
client is not thread-safe): HTTP threads hand it jobs and read the events it
produces from a queue.
"""

import argparse
import datetime
import json
import math
import os
import queue
import signal
import sys
import threading
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from jupyter_client.manager import KernelManager

HERE = os.path.dirname(os.path.abspath(__file__))
# Code run silently in every kernel after it starts (formatters, colours).
STARTUP_FILE = os.path.join(HERE, "startup.py")

KERNEL_READY_TIMEOUT = 120  # seconds; a cold kernel in gVisor takes a few
KEEPALIVE_INTERVAL = 5  # seconds of silence before a keepalive line
MAX_BODY = 16 << 20  # bytes of a request body

# The languages a context can have, and the kernel that runs each.
KERNELS = {"python": "python3"}

# Jupyter MIME types and the result fields the SDK reads them from; the
# rest go to "extra".
RESULT_FIELDS = [
    ("text/plain", "text"),
    ("text/html", "html"),
    ("text/markdown", "markdown"),
    ("image/svg+xml", "svg"),
    ("image/png", "png"),
    ("image/jpeg", "jpeg"),
    ("application/pdf", "pdf"),
    ("text/latex", "latex"),
    ("application/json", "json"),
    ("application/javascript", "javascript"),
    ("e2b/data", "data"),
    ("e2b/chart", "chart"),
]


class APIError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def normalize_language(language):
    if language is None:
        return "python"
    if not isinstance(language, str):
        raise APIError(400, "invalid_request", "language must be a string")
    lang = language.strip().lower() or "python"
    if lang not in KERNELS:
        raise APIError(
            400,
            "unsupported_language",
            "language %r is not supported (supported: %s)" % (language, ", ".join(sorted(KERNELS))),
        )
    return lang


def iso(date):
    if isinstance(date, datetime.datetime):
        if date.tzinfo is None:
            date = date.replace(tzinfo=datetime.timezone.utc)
        return date.isoformat()
    return str(date) if date else datetime.datetime.now(datetime.timezone.utc).isoformat()


def to_result(data, is_main):
    """A display_data/execute_result bundle as the SDK's result line."""
    data = dict(data)
    out = {"type": "result"}
    for mime, field in RESULT_FIELDS:
        if mime in data:
            out[field] = data.pop(mime)
    text = out.get("text")
    # A string's repr shows as the string (as E2B's server does).
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        out["text"] = text[1:-1]
    out["extra"] = data
    out["is_main_result"] = is_main
    return out


def error_line(name, value, tb=""):
    return {"type": "error", "name": name, "value": value, "traceback": tb}


class Context:
    """A kernel with its own state, run by its own worker thread."""

    def __init__(self, language, cwd):
        self.id = str(uuid.uuid4())
        self.language = language
        self.cwd = cwd
        self.km = None
        self.kc = None
        self.pid = None
        self._jobs = queue.Queue()
        self._started = threading.Event()
        self._start_error = None
        self._closed = False
        threading.Thread(target=self._run, name="context-" + self.id[:8], daemon=True).start()

    def info(self):
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    def wait_started(self):
        self._started.wait()
        if self._start_error:
            raise APIError(500, "kernel_failed", "could not start the %s kernel: %s" % (self.language, self._start_error))

    # --- called from HTTP threads ---

    def execute(self, code, env_vars):
        """Queues code; returns a queue of output lines ending with None."""
        events = queue.Queue()
        self._jobs.put(lambda: self._execute(code, env_vars, events.put))
        return events

    def restart(self):
        done = queue.Queue()
        self._jobs.put(lambda: done.put(self._guard(self._restart)))
        err = done.get()
        if err:
            raise APIError(500, "kernel_failed", "could not restart the kernel: %s" % err)

    def close(self):
        done = queue.Queue()
        self._jobs.put(lambda: done.put(self._guard(self._stop)))
        self._jobs.put(None)
        done.get()

    def interrupt(self):
        """Interrupts the running code (its client went away)."""
        pid = self.pid
        if pid:
            try:
                os.kill(pid, signal.SIGINT)
            except OSError:
                pass

    # --- the worker thread ---

    def _run(self):
        try:
            self._start()
        except Exception as e:  # reported by wait_started
            self._start_error = "%s: %s" % (type(e).__name__, e)
            self._started.set()
            self._stop()
            return
        self._started.set()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:
                traceback.print_exc()

    @staticmethod
    def _guard(fn):
        try:
            fn()
            return None
        except Exception as e:
            return "%s: %s" % (type(e).__name__, e)

    def _start(self):
        env = dict(os.environ)
        # matplotlib draws into the cell's output (the default only when
        # MPLBACKEND is unset, which the sandbox's env may not leave it).
        env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        self.km = KernelManager(kernel_name=KERNELS[self.language])
        self.km.start_kernel(cwd=self.cwd, env=env)
        self._connect()

    def _connect(self):
        self.pid = getattr(self.km.provisioner, "pid", None)
        self.kc = self.km.client()
        self.kc.start_channels(hb=False)
        self.kc.wait_for_ready(timeout=KERNEL_READY_TIMEOUT)
        with open(STARTUP_FILE) as f:
            self._silent(f.read())

    def _stop(self):
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None
        if self.km is not None:
            try:
                self.km.shutdown_kernel(now=True)
            except Exception:
                pass
            self.km = None
        self.pid = None

    def _restart(self):
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None
        self.km.restart_kernel(now=True)
        self._connect()

    def _silent(self, code):
        """Runs code without output or history; raises on an error."""
        msg_id = self.kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        failure = None
        for msg in self._messages(msg_id):
            if msg["msg_type"] == "error":
                failure = "%s: %s" % (msg["content"]["ename"], msg["content"]["evalue"])
        if failure:
            raise RuntimeError(failure)

    def _messages(self, msg_id):
        """Yields msg_id's iopub messages until the kernel is idle again.
        Raises KernelDied if the kernel process exits meanwhile."""
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                if not self.km.is_alive():
                    raise KernelDied()
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                self._drain_shell()
                return
            yield msg

    def _drain_shell(self):
        while True:
            try:
                self.kc.get_shell_msg(timeout=0)
            except queue.Empty:
                return

    def _execute(self, code, env_vars, emit):
        try:
            if env_vars:
                self._silent("__import__('_stasis_ci').env_push(%s)" % json.dumps(env_vars))
            msg_id = self.kc.execute(code, silent=False, store_history=True, allow_stdin=False, stop_on_error=True)
            for msg in self._messages(msg_id):
                line = self._translate(msg)
                if line is not None:
                    emit(line)
            if env_vars:
                self._silent("__import__('_stasis_ci').env_pop()")
        except KernelDied:
            emit(
                error_line(
                    "DeadKernelError",
                    "The kernel died while running the code; its state is lost and it was restarted",
                )
            )
            err = self._guard(self._revive)
            if err:
                emit(error_line("KernelError", "could not restart the kernel: " + err))
        except Exception as e:
            traceback.print_exc()
            emit(error_line(type(e).__name__, str(e)))
        finally:
            emit(None)

    def _revive(self):
        self._stop()
        self._start()

    @staticmethod
    def _translate(msg):
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            name = content.get("name")
            if name in ("stdout", "stderr"):
                return {"type": name, "text": content.get("text", ""), "timestamp": iso(msg["header"].get("date"))}
        elif kind == "execute_input":
            return {"type": "number_of_executions", "execution_count": content.get("execution_count")}
        elif kind == "execute_result":
            return to_result(content.get("data", {}), True)
        elif kind == "display_data":
            return to_result(content.get("data", {}), False)
        elif kind == "error":
            return error_line(content.get("ename", ""), content.get("evalue", ""), "\n".join(content.get("traceback", [])))
        return None


class KernelDied(Exception):
    pass


class Contexts:
    """The contexts by id, and the default one for each language."""

    def __init__(self, cwd):
        self.cwd = cwd
        self._lock = threading.Lock()
        self._all = {}
        self._default = {}

    def create(self, language, cwd):
        ctx = Context(language, cwd)
        try:
            ctx.wait_started()
        except APIError:
            ctx.close()
            raise
        with self._lock:
            self._all[ctx.id] = ctx
        return ctx

    def default(self, language):
        """The language's default context, started on first use (and again
        if it was removed)."""
        with self._lock:
            ctx = self._default.get(language)
            if ctx is None or ctx.id not in self._all:
                ctx = Context(language, self.cwd)
                self._default[language] = ctx
                self._all[ctx.id] = ctx
        try:
            ctx.wait_started()
        except APIError:
            with self._lock:
                if self._all.get(ctx.id) is ctx:
                    del self._all[ctx.id]
            raise
        return ctx

    def get(self, context_id):
        with self._lock:
            ctx = self._all.get(context_id)
        if ctx is None:
            raise APIError(404, "context_not_found", "context %s not found" % context_id)
        ctx.wait_started()
        return ctx

    def remove(self, context_id):
        with self._lock:
            ctx = self._all.pop(context_id, None)
        if ctx is None:
            raise APIError(404, "context_not_found", "context %s not found" % context_id)
        ctx.close()

    def list(self):
        with self._lock:
            return [c.info() for c in self._all.values()]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stasis-code-interpreter"
    contexts = None  # set by main

    def log_message(self, fmt, *args):
        pass  # no access log: code and env vars stay out of logs

    # --- plumbing ---

    def _send_json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_empty(self, status=204):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise APIError(411, "length_required", "send the body with a Content-Length")
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise APIError(400, "invalid_request", "bad Content-Length")
        if n > MAX_BODY:
            raise APIError(413, "body_too_large", "request body over %d bytes" % MAX_BODY)
        raw = self.rfile.read(n) if n > 0 else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise APIError(400, "invalid_json", "request body is not JSON: %s" % e)
        if not isinstance(body, dict):
            raise APIError(400, "invalid_request", "request body must be a JSON object")
        return body

    def _route(self, method):
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        parts = path.strip("/").split("/")
        try:
            if path == "/health" and method == "GET":
                return self._send_json(200, "OK")
            if path == "/execute" and method == "POST":
                return self._execute()
            if path == "/contexts" and method == "POST":
                return self._create_context()
            if path == "/contexts" and method == "GET":
                return self._send_json(200, self.contexts.list())
            if len(parts) == 2 and parts[0] == "contexts" and method == "DELETE":
                self._body()
                self.contexts.remove(parts[1])
                return self._send_empty()
            if len(parts) == 3 and parts[0] == "contexts" and parts[2] == "restart" and method == "POST":
                self._body()
                self.contexts.get(parts[1]).restart()
                return self._send_empty()
            raise APIError(404, "not_found", "no route %s %s" % (method, path))
        except APIError as e:
            self._send_json(e.status, {"error": {"code": e.code, "message": e.message}})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_DELETE(self):
        self._route("DELETE")

    # --- endpoints ---

    def _create_context(self):
        body = self._body()
        language = normalize_language(body.get("language"))
        cwd = body.get("cwd") or self.contexts.cwd
        if not isinstance(cwd, str):
            raise APIError(400, "invalid_request", "cwd must be a string")
        if not os.path.isdir(cwd):
            raise APIError(400, "invalid_cwd", "cwd %s is not a directory" % cwd)
        ctx = self.contexts.create(language, cwd)
        self._send_json(200, ctx.info())

    def _execute(self):
        body = self._body()
        code = body.get("code")
        if not isinstance(code, str):
            raise APIError(400, "invalid_request", "code (a string) is required")
        context_id, language = body.get("context_id"), body.get("language")
        if context_id and language:
            raise APIError(400, "invalid_request", "give context_id or language, not both")
        env_vars = body.get("env_vars") or {}
        if not isinstance(env_vars, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in env_vars.items()
        ):
            raise APIError(400, "invalid_request", "env_vars must map names to string values")
        if context_id:
            if not isinstance(context_id, str):
                raise APIError(400, "invalid_request", "context_id must be a string")
            ctx = self.contexts.get(context_id)
        else:
            ctx = self.contexts.default(normalize_language(language))

        events = ctx.execute(code, env_vars)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        connected = True
        while True:
            try:
                line = events.get(timeout=KEEPALIVE_INTERVAL)
            except queue.Empty:
                # Writing is how a vanished client is noticed.
                line = {"type": "keepalive"}
            if line is None:
                break
            if connected:
                connected = self._chunk(json.dumps(_finite(line), default=str) + "\n")
                if not connected:
                    ctx.interrupt()  # nobody waits for the rest
        if connected and self._chunk('{"type": "end_of_execution"}\n'):
            self._chunk("")

    def _chunk(self, text):
        data = text.encode()
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            return True
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
            return False


def _finite(obj):
    """obj with NaN and infinities (which JSON cannot carry) as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=49999)
    p.add_argument("--cwd", default=os.getcwd(), help="working directory of contexts that name none")
    args = p.parse_args()

    contexts = Contexts(args.cwd)
    # The default Python context first: once the port accepts connections,
    # code runs without waiting for a kernel.
    contexts.default("python")
    Handler.contexts = contexts
    httpd = ThreadingHTTPServer((args.host, args.port), Handler)
    httpd.daemon_threads = True
    print("code interpreter listening on %s:%d" % (args.host, args.port), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    httpd.serve_forever()


if __name__ == "__main__":
    main()
