"""The run report as markdown: the setting, the metrics table, the gate's decision, what the numbers say, figures."""

from __future__ import annotations

import html
from pathlib import Path

from digitgen.config import PipelineConfig
from digitgen.data.datasets import DatasetSpec, get_dataset
from digitgen.data.versions import lineage
from digitgen.figures.plots import png_data_uri
from digitgen.registry.gate import Decision
from models.samplers import SAMPLERS
from models.scores import GenerationScores, RunMetrics, class_spread, metric_context, metric_rows
from models.train import warmup_epochs

FIGURES = [
    ("samples_vae", "VAE samples"),
    ("samples_ae", 'AE "samples"'),
    ("samplers", "Samplers: the prior and the fitted mixtures"),
    ("on_demand", "Chosen classes on demand"),
    ("reconstructions", "Reconstructions"),
    ("latent_scatter", "Latent space by class"),
    ("latent_grid", "Decoded manifold"),
    ("interpolation", "Interpolation"),
    ("curves", "Training curves"),
]


def insights(m: RunMetrics, spec: DatasetSpec, prior: str = "normal") -> list[str]:
    """Statements the numbers of this run support, worded from the numbers themselves (`prior`: the VAE's)."""
    v, a, items = m.vae, m.ae, spec.items
    its_prior = "N(0, I)" if prior == "normal" else "the mixture prior it learned"
    gap = v.test_recon_nats - a.test_recon_nats
    out = []
    if gap > 0:
        out.append(
            f"The AE reconstructs test {items} {gap:.1f} nats/image better than the VAE "
            f"({a.test_recon_nats:.1f} vs {v.test_recon_nats:.1f}): nothing pulls its codes "
            f"towards a prior, while the VAE pays {v.test_kl_nats:.1f} nats/image of KL to keep its codes near {its_prior}."
        )
    else:
        out.append(
            f"The VAE reconstructs as well as the AE here ({v.test_recon_nats:.1f} vs "
            f"{a.test_recon_nats:.1f} nats/image) while also paying {v.test_kl_nats:.1f} nats/image of KL."
        )
    pv, pa = v.prior_mismatch_nats, a.prior_mismatch_nats
    better = v.frechet_distance < a.frechet_distance
    if prior != "normal":
        out.append(
            f"Generation: the VAE draws its codes from {its_prior}, which follows where its codes lie (a "
            f"Gaussian fitted to them is {pv:.3g} nats from N(0, I)); the AE has no prior, and N(0, I) draws are "
            f"{pa:.3g} nats from its codes' Gaussian: the AE is not a generator on its own."
        )
    elif pa > pv:
        further = f"{pa / pv:.0f} times further" if pv >= 0.05 else "much further"
        line = (
            f"Generation: a Gaussian fitted to the VAE's test codes is {pv:.3g} nats from N(0, I), the AE's is "
            f"{pa:.3g} nats ({further}), so draws from N(0, I) land where the VAE decodes {items} but mostly off "
            "the AE's codes."
        )
        if better:
            line += " That is why the AE samples look like blends or noise: the AE is not a generator on its own."
        else:
            line += (
                f" Yet the AE's samples score as well here (Fréchet distance {a.frechet_distance:.1f} vs "
                f"{v.frechet_distance:.1f}): this VAE is not trained enough to show the difference."
            )
        out.append(line)
    else:
        out.append(
            f"Unexpectedly, the AE's codes sit as close to N(0, I) as the VAE's ({a.prior_mismatch_nats:.1f} vs "
            f"{v.prior_mismatch_nats:.1f} nats): compare the sample grids by eye before trusting AE samples."
        )
    rarest = spec.classes[min(range(spec.n_classes), key=lambda c: v.class_histogram[c])]
    out.append(
        f"A classifier ({m.classifier.test_accuracy:.1%} test accuracy) scores {m.quality_samples:,} samples "
        f"of each model: Fréchet distance {v.frechet_distance:.1f} (VAE) vs {a.frechet_distance:.1f} (AE), "
        f"Inception score {v.inception_score:.2f} vs {a.inception_score:.2f} (real test {items} "
        f"{m.test_digits.inception_score:.2f}): the {'VAE' if better else 'AE'} samples are closer to real {items}."
        f" The VAE's rarest class, {rarest}, gets {min(v.class_histogram):.1%} of its samples "
        f"({1 / spec.n_classes:.0%} would be even)."
    )
    bound = v.test_neg_elbo_nats - v.test_nll_is_nats
    if bound > 0:
        out.append(
            f"The importance-sampled NLL (k={v.is_samples}) is {v.test_nll_is_nats:.2f} nats/image, "
            f"{bound:.2f} nats below the negative ELBO ({v.test_neg_elbo_nats:.2f}): the gap the "
            "encoder's approximate posterior leaves."
        )
    else:
        out.append(
            f"The importance-sampled NLL (k={v.is_samples}, {v.test_nll_is_nats:.2f} nats/image) is not "
            f"below the negative ELBO ({v.test_neg_elbo_nats:.2f}): too few importance samples for a "
            "tighter estimate; raise --is-samples."
        )
    return out


def sampler_section(m: RunMetrics, spec: DatasetSpec, prior: str = "normal") -> list[str]:
    """The samplers compared (VAE and AE, from their priors and from the fitted mixtures), and classes on demand."""
    scores = {kind: GenerationScores.of(m.of(kind)) for kind in ("vae", "ae") if m.of(kind).samplers}
    if not scores:
        return []
    lines = [
        "## Samplers: where the codes come from",
        "",
        f"| Model, codes drawn from | Inception score (test {spec.items} {m.test_digits.inception_score:.2f}) "
        "| Fréchet distance | Rarest / commonest class |",
        "|---|---:|---:|---|",
    ]
    for kind, g in scores.items():
        for name, s in g.samplers.items():
            lines.append(
                f"| {kind.upper()}, {name} | {s.inception_score:.2f} | {s.frechet_distance:.1f} "
                f"| {class_spread(s.class_histogram, spec.classes)} |"
            )
    # what each sampler is, under the table: in its first column the table would be too wide for the UI
    lines += [
        "",
        *[f"- `{name}`: {text}" for name, text in SAMPLERS.items() if any(name in g.samplers for g in scores.values())],
        "",
    ]
    v, a = scores.get("vae"), scores.get("ae")
    if v and a and "gmm" in v.samplers and "gmm" in a.samplers:
        vp, vg, ap, ag = v.samplers["prior"], v.samplers["gmm"], a.samplers["prior"], a.samplers["gmm"]
        source = "N(0, I)" if prior == "normal" else "their priors (the VAE's learned mixture, N(0, I) for the AE)"
        line = (
            f"From {source} the VAE's {spec.items} score {vp.inception_score:.2f} and the AE's "
            f"{ap.inception_score:.2f}; drawn from a mixture fitted to each model's own codes they score "
            f"{vg.inception_score:.2f} and {ag.inception_score:.2f} (Fréchet distance {vp.frechet_distance:.0f} "
            f"→ {vg.frechet_distance:.0f} and {ap.frechet_distance:.0f} → {ag.frechet_distance:.0f})."
        )
        if ag.frechet_distance < ap.frechet_distance:
            line += (
                " The AE's decoder was never the problem: it lacked a distribution to draw codes from, and "
                "N(0, I) is not it."
            )
        if vg.frechet_distance < vp.frechet_distance and prior == "normal":
            line += (
                " The VAE's KL term pulls its codes towards N(0, I), but not enough to fill it, so a density "
                "fitted after training beats its own prior as a sampler."
            )
        elif vg.frechet_distance < vp.frechet_distance:
            line += (
                " Even a prior learned with the VAE leaves a gap to where its codes lie: a density fitted after "
                "training, one per class, beats it as a sampler."
            )
        elif prior != "normal":
            line += (
                " The prior learned with the VAE samples as well as a density fitted after training: learning it "
                "closed the gap N(0, I) leaves between the prior and where the codes lie."
            )
        lines.append(line)
        lines.append("")
    if v and v.on_demand:
        o = v.on_demand
        worst = min(range(len(o.fidelity)), key=o.fidelity.__getitem__)
        lines.append(
            f"On demand (`digitgen generate`, a chosen class): of {o.per_class} VAE images drawn for each class, "
            f"the classifier gives the asked-for class to {min(o.fidelity):.1%}-{max(o.fidelity):.1%} "
            f"(lowest: {spec.classes[worst]}); their variety is {min(o.diversity):.2f}-{max(o.diversity):.2f} "
            "of real test images of the class (mean pairwise distance in the classifier's features)."
        )
        lines.append("")
    return lines


def md(text) -> str:
    """Text from records (run and batch names) as inert markdown inside a line: no links or images (brackets), no
    emphasis, code or table cells, no HTML; other characters stay as they are, so the raw file reads plainly."""
    inert = "".join("\\" + c if c in "\\`*_[]|~" else c for c in html.escape(str(text), quote=False))
    return inert.replace("\\](", "\\]\\(")  # nor a link's target after an escaped bracket


def gate_line(d: Decision) -> str:
    """The model gate's decision, with both numbers."""
    if d.already_champion:
        return (
            f"Already the champion: this run was promoted before it was interrupted (test NLL "
            f"{d.challenger:.2f} nats/image); the registry and its alias are unchanged."
        )
    if not d.candidate:
        return f"Not a candidate: this run (test NLL {d.challenger:.2f} nats/image) was {d.why}."
    if d.reason:
        return f"Not promoted: test NLL {d.challenger:.2f} could not be compared with the champion. {md(d.reason)}"
    if d.champion is None:
        return f"Promoted: the first champion (test NLL {d.challenger:.2f} nats/image)."
    settings = "same evaluation settings"
    if d.rescored:  # its record holds its value under its own settings
        settings = (
            f"re-scored under this run's evaluation settings; its record says {d.champion_recorded:.2f} under its own"
        )
    versus = f"the champion {md(d.champion_run)} ({d.champion:.2f} nats/image, {settings})"
    if d.replicate:
        return (
            f"Not promoted: test NLL {d.challenger:.2f} against {versus}. This run was trained as the champion "
            f"was, on the same data, the seed aside: a replicate, whose difference "
            f"({d.difference_nats:+.2f} nats) is the seed's luck, not an improvement. The champion stays."
        )
    paired = (
        f"the larger of --gate-margin and 2 standard errors of the paired per-image difference, {d.difference_se:.3f}"
        if d.paired
        else "--gate-margin; the champion has no per-image record to pair with"
    )
    gap = f"difference {d.difference_nats:+.2f} nats, margin {d.margin_nats:.2f} ({paired})"
    if d.promoted:
        return f"Promoted: test NLL {d.challenger:.2f} beats {versus} by more than the gate's margin: {gap}."
    return (
        f"Not promoted: test NLL {d.challenger:.2f} does not beat {versus} by more than the gate's margin, "
        f"so it stays: {gap}."
    )


def setting_line(config: PipelineConfig, spec: DatasetSpec) -> str:
    """Which data and which model: whether the NLLs can be set beside published ones."""
    if config.binarize == "dynamic":
        data = (
            f"Data: dynamically binarized {spec.title} (a fresh binary sample of each training image every epoch, "
            "one seeded binary test set), as in the IWAE paper: the NLLs compare with published ones."
        )
    else:
        data = (
            f"Data: grey-level {spec.title} (BCE against pixel intensities, as in pytorch/examples): the NLLs do "
            f"not compare with published binarized-{spec.title} figures (use --binarize dynamic for that)."
        )
    anchors = [(k, val) for k, val in spec.anchors.items() if ("binarized" in k) == (config.binarize == "dynamic")]
    if anchors:
        data += " Published figures on this data: " + "; ".join(f"{k}: {val:.2f} nats" for k, val in anchors) + "."
    model = f"Model: {config.arch} encoder and decoder"
    if config.pixel_head:
        model += (
            f", with a pixel head (each pixel also sees the pixels above and to its left in a "
            f"{config.pixel_kernel}x{config.pixel_kernel} window)"
        )
    if config.prior == "mixture":
        model += f"; the VAE's prior a {config.prior_components}-component Gaussian mixture learned with it"
    warmup = warmup_epochs(config.kl_warmup, config.epochs)
    if warmup > 0:
        model += f"; KL weight warmed up from 0 over {warmup:g} epoch{'s' if warmup != 1 else ''}"
    return f"{data} {model}."


def render(
    config: PipelineConfig,
    metrics: RunMetrics,
    decision: Decision,
    figures: dict[str, str],
    inline: bool,
    version: dict | None = None,
    tracked: dict | None = None,
) -> str:
    """The report as markdown; figures inline as data URIs (artifact) or as relative file links (report.md);
    `tracked`: the run's MLflow record (mlflow.json), linked."""
    spec = get_dataset(config.dataset)
    items = spec.items
    e = lambda text: html.escape(str(text), quote=False)  # noqa: E731
    rows = metric_rows(metrics, metric_context(metrics, spec.classes, items, config.prior, config.latent_dim))
    lines = [
        f"# digitgen report: run `{e(config.run_name)}` on {spec.title}",
        "",
        f"Training data: {md(lineage(version))}." if version else f"Training data: version {md(config.data_version)}.",
        "",
        f"{metrics.n_train:,} training and {metrics.n_test:,} test images; latent dim {config.latent_dim}, "
        f"beta {config.beta:g}, {config.epochs} epoch{'s' if config.epochs != 1 else ''}, batch {config.batch_size}, lr {config.lr:g}, "
        f"hidden {config.hidden}, seed {config.seed}, device {e(metrics.device)}.",
        "",
        setting_line(config, spec),
        "",
        *(
            [
                f"Tracked in MLflow: run [{tracked['run_id']}]({tracked['url']}) of experiment `digitgen-{config.dataset}`"
                + (
                    ""
                    if tracked["tracking_uri"].startswith("http")
                    else " (local store: `make mlflow` serves that page)"
                )
                + ".",
                "",
            ]
            if tracked
            else []
        ),
        "| Test metric (nats per image, lower is better, unless noted) | VAE | AE |",
        "|---|---:|---:|",
        *[f"| {name} | {vae} | {ae} |" for name, vae, ae in rows],
        "",
        "## Model gate",
        "",
        gate_line(decision),
        "",
        "## What the numbers say",
        "",
        *[f"- {e(s)}" for s in insights(metrics, spec, config.prior)],
        "",
        *sampler_section(metrics, spec, config.prior),
    ]
    for key, title in FIGURES:
        if key not in figures:  # a run without fitted samplers has no sampler figures
            continue
        src = png_data_uri(figures[key]) if inline else Path(figures[key]).name
        lines += [f"## {title}", "", f"![{title}]({src})", ""]
    return "\n".join(lines)
