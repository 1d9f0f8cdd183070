"""One evaluation on several processes started by ``torchrun`` (torch.distributed).

Owns: detecting torchrun (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``), joining the process group
(gloo on CPU, NCCL on CUDA, with a timeout so a failed or hung rank ends the evaluation with
an error instead of a stuck collective), and the engine's distributed passes: the probe's
examples split across ranks (``data_parallel``: class sums and Gram blocks, summed with
``all_reduce``) or the selected parameters split across ranks (``sharded``: per-example
norms, class-sum products and Gram entries are sums over parameters). Both give the
one-process result, to rounding.

May import: ``stiffness``, ``monitor.errors``.
"""
