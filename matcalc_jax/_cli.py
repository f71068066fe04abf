"""The ``matcalc-jax`` command: ``verify``, ``bench``, ``list`` and ``docs``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

PLATFORMS = ("cpu", "gpu", "default")


def _split(values: Sequence[str] | None) -> list[str] | None:
    """Accept both ``--rules a b`` and ``--rules a,b``."""
    if values is None:
        return None
    return [item for value in values for item in value.split(",") if item]


def _select_platform(platform: str) -> None:
    import jax

    if platform == "cpu":
        jax.config.update("jax_platforms", "cpu")
    elif platform == "gpu":
        jax.config.update("jax_platforms", "cuda")


def _progress(rule_id: str, dtype: str, size: int) -> None:
    if sys.stderr.isatty():
        print(f"\rchecking {rule_id:<24} {dtype:<8} size {size:<5}", end="", file=sys.stderr)


def _format_error(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _print_report(report) -> None:
    from matcalc_jax._catalogue import rule

    env = report.environment
    print(
        f"device: {env['platform']} ({env['device_kind']}), jax {env['jax']}, "
        f"jaxlib {env['jaxlib']}, x64 {env['x64']}, matmul precision {env['matmul_precision']}"
    )
    dtypes = list(dict.fromkeys(c.dtype for c in report.checks))
    sizes = sorted({c.size for c in report.checks})
    print(f"sizes {sizes}; errors are max |closed - reference| / max |reference| over sizes")
    print(
        "verdict: every check passed (jacfwd, jacrev, eager, denominator layout, finite "
        "differences, structured form, mv, vm, adjoint; for Hessians: jax.hessian, structured "
        "form, forward-over-reverse hvp, finite differences); details with --json"
    )
    columns = [("rule", 22), ("formula", 46)]
    for dtype in dtypes:
        short = dtype.replace("float", "f")
        columns += [(f"{short} fwd", 9), (f"{short} rev", 9)]
        if dtype == "float64":
            columns.append((f"{short} fd", 9))
        columns.append((f"{short} hess", 9))
    columns.append(("verdict", 7))
    print("  ".join(name.ljust(width) for name, width in columns))
    print("  ".join("-" * width for _, width in columns))
    for rule_id in report.rule_ids:
        formula = rule(rule_id).plain
        if len(formula) > 46:
            formula = formula[:45] + "~"
        cells = [rule_id.ljust(22), formula.ljust(46)]
        for dtype in dtypes:
            references = ["jacfwd", "jacrev"] + (
                ["finite_difference"] if dtype == "float64" else []
            )
            references.append("hessian")
            for reference in references:
                cells.append(_format_error(report.max_error(rule_id, dtype, reference)).ljust(9))
        cells.append("pass" if report.rule_passed(rule_id) else "FAIL")
        print("  ".join(cells))
    for check in report.failures():
        print(
            f"FAIL {check.rule} {check.dtype} size {check.size} vs {check.reference}: "
            f"error {check.error:.3e} > tolerance {check.tolerance:.1e} {check.detail}".rstrip()
        )
    passed = sum(report.rule_passed(r) for r in report.rule_ids)
    print(f"{passed} of {len(report.rule_ids)} rules pass ({len(report.checks)} checks)")


def _verify(args: argparse.Namespace) -> int:
    from matcalc_jax._harness import DTYPES, verify

    report = verify(
        _split(args.rules),
        dtypes=_split(args.dtype) or DTYPES,
        sizes=args.size,
        seed=args.seed,
        progress=_progress,
    )
    if sys.stderr.isatty():
        print("\r" + " " * 50 + "\r", end="", file=sys.stderr)
    _print_report(report)
    if args.json:
        report.to_json(args.json)
        print(f"report written to {args.json}")
    return 0 if report.passed else 1


def _bench_progress(done: int, total: int, label: str) -> None:
    """A progress bar on a terminal; one line per case in a log."""
    if not sys.stderr.isatty():
        print(f"[{done}/{total}] {label}", file=sys.stderr, flush=True)
        return
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    end = "\n" if done == total else ""
    print(f"\r[{bar}] {done}/{total} {label:<40}", end=end, file=sys.stderr, flush=True)


def _bench(args: argparse.Namespace) -> int:
    from matcalc_jax import _bench_output as output
    from matcalc_jax._bench import bench

    report = bench(
        _split(args.rules),
        dtypes=_split(args.dtype) or ("float32",),
        sizes=args.sizes,
        quick=args.quick,
        rounds=args.rounds,
        progress=_bench_progress,
    )
    env = report.environment
    print(
        f"device: {env['platform']} ({env['device_kind']}), jax {env['jax']}, "
        f"{env['cpu_count']} cpus, host {env['host']}; times are medians of "
        f"{report.settings['rounds']} rounds"
    )
    print(output.format_table(report))
    print(
        "speed-up: best of jacfwd/jacrev over closed form; clear: closed form's upper quartile "
        "below autodiff's lower; x floor: closed form over the time to write the Jacobian"
    )
    if any(case.hessian for case in report.cases):
        print(
            "Hessians: speed-up is jax.hessian over the closed-form Hessian; H v is the dense "
            "closed-form Hessian formed and applied to a vector; hvp is the structured "
            "Hessian's mv; ratios above 1 mean hvp is faster"
        )
    if args.out:
        output.write_json(report, args.out)
        print(f"wrote {args.out}")
    if args.csv:
        Path(args.csv).write_text(output.format_csv(report), encoding="utf-8")
        print(f"wrote {args.csv}")
    if args.markdown:
        Path(args.markdown).write_text(output.format_markdown(report), encoding="utf-8")
        print(f"wrote {args.markdown}")
    if args.plots:
        for path in output.write_plots(report, args.plots):
            print(f"wrote {path}")
    return 0


def _bench_models(args: argparse.Namespace) -> int:
    import json

    from matcalc_jax._bench_models import bench_models, format_models
    from matcalc_jax._harness import environment

    cases = bench_models(dtype=args.dtype, quick=args.quick, rounds=args.rounds)
    env = environment()
    print(f"device: {env['platform']} ({env['device_kind']}), jax {env['jax']}")
    print(format_models(cases))
    if args.out:
        data = {
            "schema": "matcalc-jax/bench-models/1",
            "environment": env,
            "cases": [
                {
                    "case": c.rule,
                    "dtype": c.dtype,
                    "width": c.size,
                    "batch": c.jacobian_shape[0],
                    "timings": {m: dataclasses.asdict(t) for m, t in c.timings.items()},
                }
                for c in cases
            ],
        }
        Path(args.out).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from matcalc_jax._catalogue import rules

    for r in rules():
        print(f"{r.id:<22} {r.source:<5} {r.plain}")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from matcalc_jax._docs import render_rules_markdown

    text = render_rules_markdown()
    path = Path(args.out)
    if args.check:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            print(f"{path} is stale: run `matcalc-jax docs --out {path}`", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


def _accuracy(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_x64", True)
    from matcalc_jax import _accuracy

    text = _accuracy.markdown()
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matcalc-jax",
        description="Matrix-calculus rules: closed-form Jacobians checked against JAX autodiff.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    verify = commands.add_parser(
        "verify", help="check every closed form against jacfwd, jacrev and finite differences"
    )
    verify.add_argument("--rules", nargs="+", help="rule ids (default: all)")
    verify.add_argument(
        "--dtype", nargs="+", help="dtypes (default: float32 float64); float16, bfloat16 too"
    )
    verify.add_argument("--size", nargs="+", type=int, help="sizes (default: 1 4 16)")
    verify.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    verify.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    verify.add_argument(
        "--platform",
        choices=PLATFORMS,
        default="cpu",
        help="cpu (default), gpu, or default (JAX's own choice)",
    )
    verify.set_defaults(run=_verify)

    bench = commands.add_parser(
        "bench", help="time closed forms against jacfwd, jacrev and the write floor"
    )
    bench.add_argument("--rules", nargs="+", help="rule ids (default: all)")
    bench.add_argument("--dtype", nargs="+", help="dtypes (default: float32)")
    bench.add_argument("--sizes", nargs="+", type=int, help="sizes for every rule")
    bench.add_argument("--quick", action="store_true", help="two small sizes, three rounds")
    bench.add_argument("--rounds", type=int, help="rounds of samples (default 7; quick 3)")
    bench.add_argument("--out", metavar="PATH", help="write the results as JSON")
    bench.add_argument("--csv", metavar="PATH", help="write every timing as CSV")
    bench.add_argument("--markdown", metavar="PATH", help="write the table as Markdown")
    bench.add_argument("--plots", metavar="DIR", help="write PNG plots (needs matplotlib)")
    bench.add_argument(
        "--platform", choices=PLATFORMS, default="cpu", help="cpu (default), gpu, or default"
    )
    bench.set_defaults(run=_bench)

    models = commands.add_parser(
        "bench-models",
        help="time an MLP training step with matcalc_jax.nn against jax.nn, and the "
        "closed-form backprop against jax.grad",
    )
    models.add_argument("--dtype", default="float32", help="dtype (default: float32)")
    models.add_argument("--quick", action="store_true", help="one small size, three rounds")
    models.add_argument("--rounds", type=int, help="rounds of samples (default 7; quick 3)")
    models.add_argument("--out", metavar="PATH", help="write the results as JSON")
    models.add_argument(
        "--platform", choices=PLATFORMS, default="cpu", help="cpu (default), gpu, or default"
    )
    models.set_defaults(run=_bench_models)

    listing = commands.add_parser("list", help="list the rules with their formulas")
    listing.set_defaults(run=_list, platform="default")

    accuracy = commands.add_parser(
        "accuracy",
        help="measure matcalc_jax.nn and jax.nn against mpmath (ulps) and write the table",
    )
    accuracy.add_argument("--out", default="-", help="a Markdown file, or - for stdout")
    accuracy.set_defaults(run=_accuracy, platform="cpu")
    docs = commands.add_parser("docs", help="write docs/rules.md from the catalogue")
    docs.add_argument("--out", default="docs/rules.md", help="path (default: docs/rules.md)")
    docs.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    docs.set_defaults(run=_docs, platform="default")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for option in ("size", "sizes", "rounds"):
        value = getattr(args, option, None)
        values = value if isinstance(value, list) else [value]
        if value is not None and any(v < 1 for v in values):
            parser.error(f"--{option} takes positive integers; got {value}")
    _select_platform(args.platform)
    try:
        return args.run(args)
    except (KeyError, ValueError, TypeError) as error:
        message = error.args[0] if error.args else str(error)
        print(f"matcalc-jax: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
