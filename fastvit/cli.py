"""`fastvit train | eval | bench | info | convert | data | plan`: parse, build, run; nothing else lives here."""

import argparse
import importlib
import sys

USAGE = """fastvit <command> [args]

  train [RECIPE|FILE.yaml] [key=value ...]     train (default recipe: demo); resumes a run folder
  train RECIPE --dry-run RANK/WORLD [...]      build one rank of a WORLD-rank job on the meta device, print it
  eval knn|linear RUN|CHECKPOINT|MODEL [key=value ...]   frozen-feature evaluation, prints JSON; MODEL: a
                                               native .pth / .safetensors file or an HF folder
  bench kernels|step|data|learning [key=value ...]   benchmarks: print a table, write JSON
  convert SRC DST [--to hf|native] [...]       checkpoint converters (Web-SSL / DINOv2 / Hugging Face)
  export RUN_DIR|CHECKPOINT DST [--to hf|native] [--which teacher|student] [--heads]
                                               a run's model as one native file or an HF folder
  data make-shards SRC_FOLDER OUT_DIR [...]    write webdataset tar shards from an image folder
  plan [key=value ...] gpus=N gpu=h200 [verify=1]   parallel layouts: memory per GPU, step time; verify=1
                                               dry-runs the top three and checks the memory columns
  info                                         versions, devices, the build and the backends of each op
"""

# command -> (module, function): each takes the remaining argv and returns an exit code.
_BENCHES = {
    "kernels": "fastvit.benchmarks.kernels",
    "step": "fastvit.benchmarks.step",
    "data": "fastvit.benchmarks.data",
    "learning": "fastvit.benchmarks.learning",
}
_DATA = {"make-shards": "fastvit.data.shards"}


def _dispatch(table, what, argv):
    if not argv or argv[0] not in table:
        got = argv[0] if argv else "nothing"
        print(f"fastvit {what}: expected one of {', '.join(table)}, got {got}", file=sys.stderr)
        return 2
    return importlib.import_module(table[argv[0]]).main(argv[1:])


def cmd_info(argv):
    from fastvit.info import main

    return main(argv)


def _pop_option(argv, name):
    """(value, the other arguments) of `name VALUE` or `name=VALUE` in argv; value None when it is absent."""
    for i, arg in enumerate(argv):
        if arg == name:
            if i + 1 == len(argv):
                raise ValueError(f"{name} needs a value")
            return argv[i + 1], argv[:i] + argv[i + 2 :]
        if arg.startswith(name + "="):
            return arg.partition("=")[2], argv[:i] + argv[i + 1 :]
    return None, argv


def cmd_train(argv):
    spec, argv = _pop_option(argv, "--dry-run")
    if spec is not None:  # one rank of the job built on the meta device over a fake process group
        from fastvit.config import load_config
        from fastvit.parallel.dry_run import main as dry_run
        from fastvit.train.run import split_recipe

        return dry_run(load_config(*split_recipe(argv)), spec)
    from fastvit.train.run import main

    return main(argv)


def cmd_eval(argv):
    from fastvit.eval.run import main

    return main(argv)


def cmd_plan(argv):
    from fastvit.parallel.plan import main

    return main(argv)


def cmd_convert(argv):
    from fastvit.interop.convert import main

    return main(argv)


def cmd_export(argv):
    from fastvit.interop.export import main

    return main(argv)


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "bench": lambda argv: _dispatch(_BENCHES, "bench", argv),
    "convert": cmd_convert,
    "export": cmd_export,
    "data": lambda argv: _dispatch(_DATA, "data", argv),
    "plan": cmd_plan,
    "info": cmd_info,
}


def _run_command(command, argv):
    """command(argv); a process group the command started (torchrun) is destroyed when it returns, after a
    barrier, so that no rank tears gloo / NCCL down under a peer and none is left to the interpreter's exit
    (gloo's threads destroyed there abort the process: "terminate called without an active exception")."""
    import torch.distributed as dist

    started_here = not dist.is_initialized()
    code = command(argv)
    if started_here and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return code


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="fastvit", usage=USAGE, add_help=True)
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    args = parser.parse_args(argv[:1])
    from fastvit.errors import StopRequested, one_line, os_error_message

    try:
        return _run_command(COMMANDS[args.command], argv[1:])
    except StopRequested as e:  # SIGTERM / SIGINT: the checkpoint is written; exit non-zero, as preempted
        print(f"fastvit {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # SIGINT before training installed its handler (start-up) or in another command
        print(f"fastvit {args.command}: interrupted by SIGINT", file=sys.stderr)
        return 130
    except ValueError as e:
        # What a user can get wrong (a config key, a path, a shape, a data or checkpoint file: UserError and the
        # ValueErrors of argument checks) ends in one clear line; other exceptions are bugs and keep a traceback.
        print(f"fastvit {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        message = os_error_message(e)  # disk full, read-only folder, permissions
        if message is None:
            raise
        print(f"fastvit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
