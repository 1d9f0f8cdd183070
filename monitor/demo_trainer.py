"""The demo's model and probe under their first import path, for configs older demos wrote.

A demo folder's ``config.yaml`` names ``monitor.demo_trainer:build_mlp`` and
``monitor.demo_trainer:probe`` as factories; they now live in ``monitor.demo.trainer``, and
``python -m monitor.demo_trainer`` still runs the demo's trainer.
"""

from monitor.demo.trainer import build_mlp, main, probe

__all__ = ["build_mlp", "main", "probe"]

if __name__ == "__main__":
    raise SystemExit(main())
