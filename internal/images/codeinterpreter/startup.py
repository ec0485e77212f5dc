# Run silently in every stasis code-interpreter kernel after it starts (and
# restarts). It keeps its helpers out of the user's namespace.
def _stasis_setup():
    import math
    import os
    import sys
    import types

    from IPython import get_ipython
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName, Unicode

    ip = get_ipython()
    # Tracebacks without ANSI colour codes: they reach clients as text.
    ip.run_line_magic("colors", "NoColor")

    class DataFormatter(BaseFormatter):
        """e2b/data: a pandas DataFrame as {column: [values]}, the result's
        "data" field in E2B's SDK."""

        format_type = Unicode("e2b/data")
        print_method = ObjectName("_repr_e2b_data_")
        _return_type = (dict,)

        def __call__(self, obj):
            pandas = sys.modules.get("pandas")  # no DataFrame without it
            if pandas is None or not isinstance(obj, pandas.DataFrame):
                return super().__call__(obj)

            def plain(v):
                if isinstance(v, pandas.Timestamp):
                    return v.isoformat()
                if isinstance(v, float) and not math.isfinite(v):
                    return None
                if hasattr(v, "item"):  # a numpy scalar
                    return plain(v.item())
                return v

            return {str(k): [plain(v) for v in col] for k, col in obj.to_dict(orient="list").items()}

    ip.display_formatter.formatters["e2b/data"] = DataFormatter(parent=ip.display_formatter)

    # Per-execution environment variables (POST /execute's env_vars).
    saved = []

    def env_push(env):
        saved.append({k: os.environ.get(k) for k in env})
        os.environ.update(env)

    def env_pop():
        for k, v in saved.pop().items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    mod = types.ModuleType("_stasis_ci")
    mod.env_push, mod.env_pop = env_push, env_pop
    sys.modules["_stasis_ci"] = mod


_stasis_setup()
del _stasis_setup
