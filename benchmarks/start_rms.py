"""Where should sampling start? The RMS of a model's own ODE samples by start time.

For the zoo and held-out models on the cosine schedule (``squaredcos_cap_v2``, whose capped last
beta leaves alpha(999) = 4.9e-5) and, for comparison, a linear one: the RMS and largest |x| of N
samples of the reference solver (100 steps, unclamped) from t = 999 (T-1), from ``t_max`` (where
grids start: log-SNR -5.1 for the cosine schedule) and from a few later times. Data lie in [-1, 1];
``align`` warns when the RMS is over 5 (``validation.run_off_message``).

    python benchmarks/start_rms.py [--samples 32] [--threads 2]
"""

from __future__ import annotations

from dpm_align.aligner_core.models.loading import load_model
from zoo import labelled_models, sample_scale, scale_args

MODELS = ["heldout/cifar16-eps-cosine", "heldout/textures8-eps-cosine", "heldout/mnist16-eps-cosine",
          "heldout/digits8-v-cosine", "zoo/mnist16-v-cosine", "heldout/mnist28-eps-linear"]
STARTS = (999.0, None, 990.0, 980.0, 950.0, 900.0)  # None: the schedule's t_max


def main() -> None:
    args = scale_args(32)
    paths = labelled_models()
    print(f"{args.samples} samples each, reference solver 100 steps, unclamped; cells: RMS (largest |x|)")
    print("| model | t_max | " + " | ".join("from t_max" if s is None else f"from {s:g}" for s in STARTS) + " |")
    print("| --- | --- |" + " --- |" * len(STARTS))
    for label in MODELS:
        model = load_model(str(paths[label]))
        cells = []
        for start in STARTS:
            scale = sample_scale(model, args.samples, start)
            cells.append(f"{scale['rms']:.3g} ({scale['max_abs']:.3g})")
        print(f"| {label} | {model.eps.schedule.t_max:.2f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
