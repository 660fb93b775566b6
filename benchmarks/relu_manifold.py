"""The paper's Figure 1: a 2-D spiral embedded in n dimensions, through ReLU, and back.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", Figure 1: the
spiral x (the "manifold of interest") is embedded into R^n by a random matrix T (n x 2),
passed through ReLU, and projected back to 2-D with the pseudo-inverse T+:

    x_hat = T+ ReLU(T x)

For each n, over several random T (entries N(0, 1)), three measures of the loss:

  T+ error          ||x - T+ ReLU(Tx)|| / ||x||  (Frobenius over all points; the paper's
                    decoder). Tends to 0.5, not 0, for wide n: ReLU(z) = (z + |z|) / 2, so
                    T+ ReLU(Tx) = x/2 + T+|Tx|/2 and the second term averages out.
  read-out error    the same with the best single linear map D (least squares, fitted on
                    the points) in place of T+: how much of x a linear layer can still read.
  non-invertible    fraction of points whose ReLU output does not determine them: the
                    active rows of T (coordinates of Tx > 0) have rank < 2, so a whole
                    segment of inputs gives the same output and no decoder can recover x.
                    For every other point `active_set_decode` recovers x exactly.
                    For Gaussian T its expectation is (n + 1) / 2^n (fewer than 2 of n
                    coin flips come up positive).

and the control: no ReLU, T+ T x = x exactly for every n >= 2. A markdown table on stdout
and a PNG panel (`relu_manifold.png`: the input, one recovered spiral per n, the loss vs n).

    python benchmarks/relu_manifold.py [--out docs/img] [--seed 0] [--seeds 20] [--points 1000]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

NS = (2, 3, 5, 15, 30)                                   # the paper's Figure 1
CURVE_NS = (2, 3, 4, 5, 7, 10, 15, 20, 30, 50, 100)      # the loss-vs-n line plots


def spiral(points: int = 1000, turns: float = 2.5, r0: float = 0.1) -> np.ndarray:
    """[points, 2] float64 Archimedean spiral around the origin, in order from the inner end
    (radius r0, kept off the origin so every point has a direction) to the outer (radius 1).
    ReLU is positively homogeneous, so the relative measures here do not depend on scale."""
    s = np.linspace(0.0, 1.0, points)
    r = r0 + (1.0 - r0) * s
    a = 2 * np.pi * turns * s
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def embedding(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random T [n, 2] with N(0, 1) entries: the layer that embeds R^2 into R^n."""
    return rng.standard_normal((n, 2))


def roundtrip(x: np.ndarray, T: np.ndarray, relu: bool = True) -> np.ndarray:
    """T+ ReLU(T x) for every row of x [m, 2] (T+ T x if relu=False): [m, 2]."""
    y = x @ T.T
    if relu:
        y = np.maximum(y, 0.0)
    return y @ np.linalg.pinv(T).T


def relu_roundtrip(x: np.ndarray, n: int, rng: np.random.Generator, relu: bool = True) -> np.ndarray:
    """Draw T [n, 2] from rng and return the recovered 2-D points T+ ReLU(T x)."""
    return roundtrip(x, embedding(n, rng), relu)


def reconstruction_error(x: np.ndarray, recovered: np.ndarray) -> float:
    """||x - recovered|| / ||x|| (Frobenius over all points): 0 = exact, 1 = as far off as
    returning the origin for every point. Dimensionless."""
    return float(np.linalg.norm(x - recovered) / np.linalg.norm(x))


def readout_error(x: np.ndarray, T: np.ndarray) -> float:
    """reconstruction_error of the best linear map D [n, 2] from ReLU(T x) back to x (least
    squares over these points): what a learned linear layer after the ReLU could recover."""
    y = np.maximum(x @ T.T, 0.0)
    D, *_ = np.linalg.lstsq(y, x, rcond=None)
    return reconstruction_error(x, y @ D)


def _active_patterns(x: np.ndarray, T: np.ndarray):
    """The distinct active sets (rows of T with (T x)_i > 0), which point has which, and the
    rank of T restricted to each. A coordinate exactly 0 counts as lost."""
    active = (x @ T.T) > 0
    patterns, which = np.unique(active, axis=0, return_inverse=True)
    ranks = np.array([np.linalg.matrix_rank(T[p]) if p.any() else 0 for p in patterns])
    return patterns, which.reshape(-1), ranks


def non_invertible(x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """[m] bool: True where the active rows of T have rank < 2 at that point, so ReLU(T x)
    does not determine x (inputs along a segment through x give the same output)."""
    _, which, ranks = _active_patterns(x, T)
    return ranks[which] < x.shape[1]


def non_invertible_fraction(x: np.ndarray, T: np.ndarray) -> float:
    """Fraction of the points of x [m, 2] that ReLU(T x) does not determine."""
    return float(non_invertible(x, T).mean())


def expected_non_invertible(n: int) -> float:
    """E[non-invertible fraction] for T with i.i.d. N(0, 1) entries and any x != 0: each
    (T x)_i is an independent symmetric coin, and fewer than 2 heads of n has probability
    (n + 1) / 2^n (distinct Gaussian rows are independent almost surely)."""
    return (n + 1) / 2.0 ** n


def active_set_decode(x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Recover x [m, 2] from y = ReLU(T x) alone, where that is possible: for each point,
    (T_A)+ y_A over its active rows A. Exact where the point is invertible; NaN elsewhere."""
    y = np.maximum(x @ T.T, 0.0)
    patterns, which, ranks = _active_patterns(x, T)
    out = np.full(x.shape, np.nan)
    for k, (p, r) in enumerate(zip(patterns, ranks)):
        if r == x.shape[1]:
            idx = which == k
            out[idx] = y[idx][:, p] @ np.linalg.pinv(T[p]).T
    return out


def information_loss(x: np.ndarray, T: np.ndarray, relu: bool = True) -> dict[str, float]:
    """The three measures for one T: 'pinv' (T+ error), 'readout', 'non_invertible'.
    With relu=False (the linear control) the read-out error equals the T+ error and no point
    is lost."""
    if not relu:
        e = reconstruction_error(x, roundtrip(x, T, relu=False))
        return {"pinv": e, "readout": e, "non_invertible": 0.0}
    return {"pinv": reconstruction_error(x, roundtrip(x, T)),
            "readout": readout_error(x, T),
            "non_invertible": non_invertible_fraction(x, T)}


def draw(n: int, seed: int, k: int) -> np.ndarray:
    """The k-th random T [n, 2] of the run with this seed."""
    return embedding(n, np.random.default_rng([seed, k]))


def sweep(x: np.ndarray, ns, seeds: int = 20, seed: int = 0, relu: bool = True) -> dict:
    """{n: {measure: [seeds] array}} over the random T's draw(n, seed, 0 .. seeds-1)."""
    out = {}
    for n in ns:
        rows = [information_loss(x, draw(n, seed, k), relu) for k in range(seeds)]
        out[n] = {key: np.array([r[key] for r in rows]) for key in rows[0]}
    return out


def _pm(a: np.ndarray, scale: float = 1.0, fmt: str = ".3f") -> str:
    return f"{scale * a.mean():{fmt}} ± {scale * a.std():{fmt}}"


def table(relu: dict, linear: dict, seeds: int, points: int, seed: int) -> str:
    lines = [f"Spiral of {points} points; T ~ N(0,1)^(n x 2); mean ± std over {seeds} random T "
             f"(seed {seed}). Errors are ||x - x_hat|| / ||x|| (dimensionless).",
             "",
             "| n | T+ error | best linear read-out error | non-invertible points (%) | (n+1)/2^n (%) |",
             "|---|---|---|---|---|"]
    for n, m in relu.items():
        lines.append(f"| {n} | {_pm(m['pinv'])} | {_pm(m['readout'])} | "
                     f"{_pm(m['non_invertible'], 100, '.1f')} | {100 * expected_non_invertible(n):.3g} |")
    worst = max(float(m["pinv"].max()) for m in linear.values())
    ns = ", ".join(str(n) for n in linear)
    lines.append(f"| control: no ReLU, n = {ns} | max {worst:.1e} | max {worst:.1e} | 0 | 0 |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "img")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random T's (panel: the first)")
    ap.add_argument("--seeds", type=int, default=20, help="random T's per n for mean ± std")
    ap.add_argument("--points", type=int, default=1000, help="points on the spiral")
    ap.add_argument("--no-plot", action="store_true", help="table only (no matplotlib needed)")
    args = ap.parse_args(argv)

    x = spiral(args.points)
    relu = sweep(x, NS, args.seeds, args.seed)
    linear = sweep(x, NS, args.seeds, args.seed, relu=False)
    print(table(relu, linear, args.seeds, args.points, args.seed))
    if not args.no_plot:
        curve = sweep(x, CURVE_NS, args.seeds, args.seed)
        path = plot(x, curve, args)
        print(f"\nplot: {path}")


def plot(x: np.ndarray, curve: dict, args) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = np.linspace(0, 1, len(x))
    lim = 1.3 * float(np.abs(x).max())
    fig = plt.figure(figsize=(18, 8))
    outer = fig.add_gridspec(2, 1, height_ratios=[1.0, 0.95], hspace=0.38)
    top = outer[0].subgridspec(1, len(NS) + 1, wspace=0.32)
    bottom = outer[1].subgridspec(1, 2, wspace=0.22)

    def spiral_axes(col, title):
        ax = fig.add_subplot(top[0, col])
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.axhline(0, color="0.85", lw=0.8, zorder=0)
        ax.axvline(0, color="0.85", lw=0.8, zorder=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$", labelpad=-2)
        return ax

    ax = spiral_axes(0, "input: spiral x in $\\mathbb{R}^2$\ncolour = position along it\n"
                        "(purple centre → yellow end)")
    ax.scatter(x[:, 0], x[:, 1], c=pos, cmap="viridis", s=5)
    for col, n in enumerate(NS, start=1):
        T = draw(n, args.seed, 0)
        rec = roundtrip(x, T)
        m = information_loss(x, T)
        ax = spiral_axes(col, f"n = {n}:  $T^+$ReLU($Tx$)\n"
                              f"$T^+$ error {m['pinv']:.2f}, read-out {m['readout']:.2f}\n"
                              f"non-invertible: {100 * m['non_invertible']:.0f}% of points")
        ax.plot(x[:, 0], x[:, 1], color="0.82", lw=0.7, zorder=1)
        ax.scatter(rec[:, 0], rec[:, 1], c=pos, cmap="viridis", s=5, zorder=2)
        outside = int((np.abs(rec) > lim).any(axis=1).sum())
        if outside:
            ax.text(0.03, 0.03, f"{outside} points outside the axes", transform=ax.transAxes,
                    fontsize=8, color="tab:red")
    fig.axes[1].text(0.0, -0.3, "grey: the input spiral, for reference; same axes in every panel",
                     transform=fig.axes[1].transAxes, fontsize=9, color="0.35")

    ns = np.array(list(curve))
    ax = fig.add_subplot(bottom[0, 0])
    for key, label, color in (("pinv", "$T^+$ReLU($Tx$)  (the paper's decoder)", "tab:red"),
                              ("readout", "best linear read-out $D\\,$ReLU($Tx$)", "tab:blue")):
        mean = np.array([curve[n][key].mean() for n in ns])
        std = np.array([curve[n][key].std() for n in ns])
        ax.plot(ns, mean, "o-", color=color, label=label + f": mean ± std of {args.seeds} T")
        ax.fill_between(ns, np.maximum(mean - std, 0), mean + std, color=color, alpha=0.15)
    ax.plot(ns, np.zeros(len(ns)), "k--", lw=1.2, label="no ReLU (control): $T^+Tx = x$, error 0")
    ax.axhline(0.5, color="tab:red", ls=":", lw=1)
    ax.text(ns[-1], 0.52, "0.5: $T^+$ReLU($Tx$) → x/2", ha="right", va="bottom", color="tab:red",
            fontsize=9)
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_ylim(0, 2.0)
    ax.set_xlabel("n (dimension of the embedding, log scale)")
    ax.set_ylabel("relative error ||x − x̂|| / ||x||  (dimensionless)")
    ax.set_title("reconstruction error vs n")
    ax.legend(fontsize=9, loc="upper right")

    ax = fig.add_subplot(bottom[0, 1])
    frac = {n: 100 * curve[n]["non_invertible"] for n in ns}
    meas = np.array([frac[n].mean() for n in ns])
    se = np.array([frac[n].std() / np.sqrt(len(frac[n])) for n in ns])
    ax.plot(ns, [100 * expected_non_invertible(n) for n in ns], "k-", lw=1,
            label="expected for Gaussian T: (n + 1) / $2^n$")
    shown = meas > 0
    ax.errorbar(ns[shown], meas[shown], yerr=se[shown], fmt="o", color="tab:purple", capsize=3,
                label=f"measured: mean ± s.e. of {args.seeds} T (0 is not drawn on a log scale)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_ylim(1e-4, 300)
    ax.set_xlabel("n (dimension of the embedding, log scale)")
    ax.set_ylabel("non-invertible points (% of the spiral)")
    ax.set_title("points no decoder can recover (active rows of T have rank < 2)")
    ax.legend(fontsize=9, loc="lower left")

    fig.suptitle("MobileNetV2 Figure 1: a 2-D spiral through ReLU in n dimensions and back "
                 f"(one random T per panel, seed {args.seed})", fontsize=13)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "relu_manifold.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
