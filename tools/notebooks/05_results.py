"""Builder of notebooks/05_results.ipynb: the kit's results beside the paper's."""
from nbbuild import build, code, md, parameters

cells = [
    md("""
    # 05 · Results: the kit beside the paper

    The paper reports two numbers: **91.2 % accuracy on Shenzhen** and **85.7 % on Montgomery**
    for its distilled, lightweight TB detector. This chapter puts the kit's models beside them and
    asks the questions a single accuracy cannot answer:

    1. **How sure are we?** Every test-split number comes with a 95 % bootstrap confidence interval,
       and the verdict against the paper is read from the interval, not from the point.
    2. **Is it good enough to use?** The WHO has written down what a TB *triage* test must reach;
       we fix the threshold for it on validation and check the test split.
    3. **What does it cost?** Parameters, FLOPs, size on disk, CPU latency for one image and for a
       batch of 32 — the reason for distilling a student at all.
    4. **Does the number depend on the split?** *k*-fold cross-validation trains again on other
       splits and reports the mean ± standard deviation.
    5. **Does it travel?** Trained on one hospital's X-rays, tested on the other's.

    Everything is written to `results/<profile>/results.json`; the README's results table is made from
    that file by `scripts/results_table.py`, never typed by hand. The code lives in
    `tbkd_helpers/results.py` (figures in `viz.py`).

    Run it after chapter 04: it reuses every checkpoint in `artifacts/<profile>/`. Run on its own, it
    trains whatever is missing first (all of chapters 01–04: minutes on the `quick` profile).
    """),
    parameters("""
    PROFILE = "quick"       # quick | real | full
    DATA_DIR = None         # None: phantoms (quick) or $TBKD_DATA_DIR (real/full)
    SEED = 0                # every random choice derives from it
    N_BOOT = 1000           # bootstrap resamples behind each 95 % confidence interval
    STUDENTS = ["kd+cam", "ce"]  # the distilled student, and the same network trained on labels only
    CV_MODELS = None        # None: the CE student (every teacher too in the full profile)
    CV_EPOCHS = None        # None: 3 on quick, the profile's student epochs otherwise
    LATENCY_REPEATS = 10    # forward passes behind each median latency
    PROGRESS = False        # True: progress bars while training (interactive use)
    """),
    code("""
    import numpy as np
    import pandas as pd

    import tbkd_helpers as tk

    profile = tk.config.get_profile(PROFILE, data_dir=DATA_DIR, seed=SEED)
    tk.config.seed_everything(profile.seed)
    prep = tk.data.prepare(profile, progress=False)
    print(f"profile {profile.name!r} ({profile.data} data): {len(prep.records)} images, "
          f"{len(prep.split.test)} in the test split; {len(profile.teachers)} teachers, student {profile.student}")
    """, check=True),
    md("""
    ## The models

    Five teachers (chapter 02) and two students (chapter 04): the distilled one, **student (kd+cam)** —
    trained on the labels, the teacher's soft predictions and the teacher's Grad-CAM maps, the paper's
    method — and **student (ce)**, the same MobileNet V3 Small trained on the labels alone, the baseline
    that says what the distillation added. Models already trained are loaded; missing ones are trained
    now, with the settings of their chapter.

    Each model's probabilities on the validation and test images are computed once and cached beside its
    checkpoint. Its **decision threshold** is chosen on the validation split (Youden's J, as in chapter 02)
    and saved beside the checkpoint as `threshold.json`: that is the threshold `tbkd predict` applies to a
    new X-ray.
    """),
    code("""
    specs = tk.results.ensure_models(profile, prep, STUDENTS, progress=PROGRESS)
    preds = tk.results.all_predictions(profile, prep, specs)
    thresholds = {name: tk.results.save_threshold(s["dir"], preds[name]) for name, s in specs.items()}
    """),
    code("""
    for name, s in specs.items():
        print(f"{name:>18}: {s['role']:7s} {s['arch']:>18} at {profile.size_for(s['arch'])} px, "
              f"threshold {thresholds[name]['threshold']:.3f} (on {thresholds[name]['n_val']} validation images)")
    """),
    md("""
    ## Test-split metrics, with confidence intervals

    Every model on the **test split** — images no model saw while training or while its threshold was
    chosen — per data set and pooled (`all`). Each cell is `value [lower, upper]`: the 95 % interval from
    the bootstrap (the test images resampled with replacement `N_BOOT` times within each class, the
    metric recomputed on each resample; chapter 02 explains it).

    Why intervals? Because the test sets are small. On the real data a test split holds about 130
    Shenzhen and 28 Montgomery images: one Montgomery image more or less right moves the accuracy by
    $100/28 \\approx 3.6$ points. Two models whose intervals overlap broadly have **not** been shown to differ, whatever
    their point values say. On the `quick` profile the phantom test sets are smaller still, and the
    intervals very wide.
    """),
    code("""
    test = tk.results.test_metrics(preds, n_boot=N_BOOT, seed=profile.seed)
    tk.reports.metrics_table(test)
    """),
    code("""
    for name, rows in test.items():
        print(f"{name:>18}: " + "; ".join(f"{r['dataset']} accuracy {r['accuracy']:.2f}" for r in rows))
    """),
    code("""
    for name, rows in test.items():
        val = preds[name]["val"]
        chosen = tk.metrics.choose_threshold(val["labels"], val["probs"], rule="youden")
        assert all(r["threshold"] == round(chosen, 4) for r in rows), f"{name}: threshold not from validation"
        assert set(val["keys"]).isdisjoint(preds[name]["test"]["keys"]), f"{name}: validation and test overlap"
        assert set(preds[name]["test"]["keys"]) == set(prep.split.test), f"{name}: not measured on the test split"
    print("every model: threshold chosen on validation, measured on the whole test split")
    """, check=True),
    md("""
    ## Against the paper

    The paper gives accuracy only, one number per data set, without an interval, a threshold rule or a
    split. We read the comparison from our interval:

    - **beats** — the whole interval lies above the paper's figure;
    - **matches** — the interval contains it: the data cannot tell the two apart;
    - **misses** — the whole interval lies below it.

    Keep in mind what differs. The paper does not say how its models were trained; starting from
    ImageNet weights at 224 px and training for longer is the usual practice. The kit's `quick` profile
    trains the networks from scratch on tiny synthetic phantoms (64 px, 80 px for Inception V3; VGG16
    with a small head) for a few epochs — its verdicts say nothing
    about the paper, they only show the machinery — and the `real` profile reduces sizes and epochs to
    fit a laptop CPU.
    """),
    code("""
    comparison = pd.DataFrame(tk.results.paper_comparison(test)).set_index("dataset")
    comparison[["paper", "model", "accuracy", "accuracy_lo", "accuracy_hi", "verdict", "best_teacher",
                "best_teacher_accuracy"]]
    """),
    code("""
    for ds, c in comparison.iterrows():
        print(f"{ds}: paper {c['paper']:.3f}; {c['model']} {c['accuracy']:.2f} "
              f"[{c['accuracy_lo']:.2f}, {c['accuracy_hi']:.2f}] -> {c['verdict']}")
    """),
    md("""
    That verdict rests on one trained student. Chapter 04 trained the same student with several
    seeds (same split, same teachers) beside the plain `ce` student, paired by seed. Its mean and
    spread over the seeds is the figure to set beside the paper's: the bootstrap interval above
    covers only which test images were drawn, not where another training run would have landed.
    """),
    code("""
    seeds = tk.results.seeds_from_ablation(profile)
    print("\\n".join(tk.results.seed_lines(seeds)))
    """),
    md("""
    The figure shows every model's test accuracy with its interval, and the paper's figure as a black bar
    across each data set's group (the dotted line is chance for a balanced set).
    """),
    code("""
    fig = tk.viz.paper_bars(test, tk.results.PAPER)
    tk.viz.save_figure(fig, profile, "05_paper_comparison");
    """),
    md("""
    **The student against its teachers.** Distillation is meant to keep most of the teachers' accuracy in
    a much smaller network. The target the kit sets itself: on Shenzhen, the distilled student within
    1 percentage point of the best teacher (the teacher with the highest Shenzhen test accuracy — the
    strictest comparison).
    """),
    code("""
    sv = tk.results.student_vs_teacher(test, dataset="shenzhen")
    verdict = "within the target" if sv["within"] else f"misses the target by {sv['gap_pp'] - sv['tolerance_pp']:.1f} points"
    print(f"Shenzhen: {sv['student']} {100 * sv['student_accuracy']:.1f} %, best teacher ({sv['teacher']}) "
          f"{100 * sv['teacher_accuracy']:.1f} %: gap {sv['gap_pp']:+.1f} points, {verdict}")
    """),
    md("""
    ## The WHO target for a triage test

    A **triage test** sorts people at the first contact: those it flags go on to a confirmatory test
    (sputum, molecular testing), the others are sent home. Missing TB there is the costly mistake, so the
    World Health Organization's *target product profile* asks a triage test for at least **90 %
    sensitivity** with at least **70 % specificity** (WHO, *High-priority target product profiles for new
    tuberculosis diagnostics*, 2014). Computer-aided detection on chest X-rays is judged against it.

    The operating point is chosen the honest way: on the **validation** split, the highest threshold
    that still finds 90 % of the TB images (`rule="sens>=0.9"`); then, on the **test** split, the
    sensitivity and specificity at that threshold, with their intervals. A sensitivity fixed at 90 % on
    validation can land below 90 % on test: that is what a new population does to a threshold.
    "meets WHO" uses the point values; "CI above targets" asks that both lower bounds clear the targets,
    which small test sets rarely allow. A "yes" that rests on intervals of zero width (a perfect
    score on a handful of images) is not certainty either (chapter 02).
    """),
    code("""
    who = tk.results.who_operating_point(preds, n_boot=N_BOOT, seed=profile.seed)
    tk.results.who_table(who)
    """),
    code("""
    for name, rows in who.items():
        val = preds[name]["val"]
        thr = tk.metrics.choose_threshold(val["labels"], val["probs"], rule=tk.results.WHO_RULE)
        assert all(r["threshold"] == round(thr, 4) for r in rows), f"{name}: WHO threshold not from validation"
        val_sens = tk.metrics.classification_report(val["labels"], val["probs"], thr)["sensitivity"]
        assert val_sens >= 0.9, f"{name}: the validation sensitivity at the WHO threshold is {val_sens:.2f}"
    pooled = {name: next(r for r in rows if r["dataset"] == "all") for name, rows in who.items()}
    for name, r in pooled.items():
        print(f"{name:>18}: test sensitivity {r['sensitivity']:.2f}, specificity {r['specificity']:.2f} -> "
              f"{'meets' if r['meets'] else 'does not meet'} the WHO target")
    """),
    md("""
    Each dot is a model's test sensitivity and specificity at its WHO threshold (data sets pooled), the
    crosses its 95 % intervals; the green corner is where a triage test must be.
    """),
    code("""
    fig = tk.viz.who_targets(who, tk.results.WHO_TPP)
    tk.viz.save_figure(fig, profile, "05_who_operating_point");
    """),
    md("""
    ## What each model costs

    The point of distillation: a student small and fast enough for a clinic's ordinary computer. For each
    model at its input size: parameters, FLOPs of one forward pass (a multiply-add counted as two), the
    weights in float32 and the checkpoint file on disk, and the median CPU latency for one image and for
    a batch of 32 (`LATENCY_REPEATS` passes). Latencies depend on the machine and on what else runs on it,
    and a busy machine distorts even the ratios: the two students share one architecture, so the gap
    between their rows shows how noisy this run's timings are. `benchmarks/bench_student.py` measures the
    student against DenseNet121 side by side at the paper's 224 px.
    """),
    code("""
    cost = tk.results.costs(profile, specs, repeats=LATENCY_REPEATS)
    tk.reports.cost_table(cost)
    """),
    code("""
    student, teacher = cost[tk.results.student_name("kd+cam")], cost["densenet121"]
    print(f"student: {student['params']:,} parameters, {student['flops'] / 1e6:.1f} MFLOPs at {student['size']} px; "
          f"DenseNet121 has {teacher['params'] / student['params']:.1f} times the parameters and "
          f"{teacher['flops'] / student['flops']:.1f} times the FLOPs")
    """, check=True),
    md("""
    Accuracy against latency, one point per model (its area grows with the parameter count): up and to
    the left is better — as accurate, for less.
    """),
    code("""
    fig = tk.viz.cost_accuracy(cost, test)
    tk.viz.save_figure(fig, profile, "05_cost_accuracy");
    """),
    md("""
    ## *k*-fold cross-validation

    One split gives one number, and a different seed would have put other images in the test split.
    **k-fold cross-validation** cuts all the images into *k* folds (stratified by data set and class); each
    fold is held out once while a model trains on the other *k* − 1 (a part of them set aside as
    validation, for the best epoch and the threshold), so every image is tested exactly once. The spread
    of the *k* results (mean ± standard deviation) shows how much the figure depends on the split. The
    folds train `CV_EPOCHS` epochs, which on `quick` is fewer than chapter 04's student: read the spread,
    not the mean against the test-split figure.

    **What is cross-validated, and why.** The student's network trained with plain cross-entropy (the
    `ce` student, with chapter 04's recipe). An honest cross-validation of the *distilled* student would
    need, for every fold, five teachers that never saw that fold's held-out images, and their maps: the
    whole kit again, *k* times. The folds here therefore measure how much the student *architecture's*
    accuracy moves with the split; what distillation adds is measured on the fixed split above and in
    chapter 04. The costly comparison runs outside the chapters: `scripts/kfold_students.py` trains each
    fold's own teachers and compares the students over these same folds, paired by fold (README). In the `full` profile (a GPU) every teacher is cross-validated too. The fold models
    serve nothing else: nothing in the main pipeline is chosen on them. On `quick` they train for 3
    epochs to keep the chapter short.
    """),
    code("""
    cv = tk.results.kfold(profile, prep, CV_MODELS, epochs=CV_EPOCHS, progress=PROGRESS)
    tk.results.kfold_table(cv)
    """),
    code("""
    for name, res in cv["models"].items():
        held = [f["n_test"] for f in res["folds"]]
        assert sum(held) == len(prep.records), "every image is held out exactly once"
        s = res["summary"]["all"]["accuracy"]
        print(f"{name}: {cv['k']} folds of {held} held-out images, {cv['epochs']} epochs each; "
              f"accuracy {s['mean']:.2f} ± {s['sd']:.2f} (all images)")
    """),
    code("""
    fig = tk.viz.kfold_points(cv)
    tk.viz.save_figure(fig, profile, "05_kfold");
    """),
    md("""
    ## Across data sets: trained on one hospital, tested on the other

    Shenzhen (China) and Montgomery County (USA) X-rays come from different machines, populations and
    years: their brightness, contrast and field of view differ (chapter 00's histograms). A detector that
    learned one set's quirks can fail on the other, and a clinic's X-rays will always be "the other set".
    Here the student's network learns on **one** set (its train part; best epoch and threshold on its
    validation part) and is tested on **every** image of the other set — none of which it saw — next to
    its own set's test split for comparison. The gap between the two bars is what a new site costs,
    provided the in-domain bar is clear of chance: these runs train only `CV_EPOCHS` epochs, and on
    `quick` a model at chance at home shows no such gap.
    """),
    code("""
    cross = tk.results.cross_dataset(profile, prep, n_boot=N_BOOT, epochs=CV_EPOCHS, progress=PROGRESS)
    tk.results.cross_table(cross)
    """),
    code("""
    for run in cross["runs"]:
        n_other = sum(r.dataset == run["test"] for r in prep.records)
        assert run["cross"]["n"] == n_other, "tested on every image of the other data set"
        print(f"trained on {run['train']} ({run['n_train']} images): accuracy {run['in_domain']['accuracy']:.2f} "
              f"on its own test split, {run['cross']['accuracy']:.2f} on all {n_other} {run['test']} images")
    """),
    code("""
    fig = tk.viz.cross_bars(cross)
    tk.viz.save_figure(fig, profile, "05_cross_dataset");
    """),
    md("""
    ## Where each model looks

    Accuracy says whether a model is right; its Grad-CAM map says *what it used*. For every model, on
    the test images (chapter 03 explains the measures):

    - **in-lung share**: how much of the map's mass lies inside the U-Net's lung mask;
    - **pointing game**: how often the map's peak lands on a lesion, and **lesion share**: how much of
      its mass lies on lesions — both only where the lesions are known (the phantoms; real X-rays come
      without lesion masks, so these read `n/a` there);
    - **agreement with guide**: the correlation with the guiding teacher's map of the same image (about
      1 for the guide itself: its maps recomputed here against its cached ones).

    Each figure has its 95 % interval (the test images resampled), and the first line gives what a map
    without information scores — a uniform map's in-lung and lesion shares, a random peak's chance of
    landing on a lesion. A figure means something only where its interval lies clear of that line.
    """),
    code("""
    loaded = {name: (tk.pipeline.load_classifier(s["dir"] / "best.pt"), s["arch"]) for name, s in specs.items()}
    attention = tk.pipeline.attention_report(profile, prep, loaded, n_boot=N_BOOT)
    print(f"guide: {attention['guide']}; {attention['n_images']} test images")
    print("\\n".join(tk.reports.attention_lines(attention)))
    """),
    md("""
    ## Everything in one file

    `results/<profile>/results.json` holds all of the above: per model its checkpoint (and SHA-256),
    validation AUC and saved threshold; the test metrics with intervals; the WHO operating points; the
    costs; the folds and their summary; the cross-data-set runs; the comparison with the paper; where
    each model looks, with the chance levels. The
    keys of the file are sorted; `model_order` gives the reading order.
    """),
    code("""
    results = tk.results.assemble(profile, specs, preds, test, who, cost, cv, cross, N_BOOT, thresholds, attention,
                                  seeds)
    path = tk.results.write(results, profile)
    back = tk.results.load(profile)
    assert back["model_order"] == list(specs) and set(back["test"]) == set(specs)
    print(f"wrote {path.relative_to(profile.results.parent)}: " + ", ".join(sorted(back)))
    """, check=True),
    md("""
    The README's results table is made from that file alone. `scripts/results_table.py --profile real`
    prints it, and with `--update-readme` writes it into README.md between the
    `<!-- results:begin -->` and `<!-- results:end -->` markers. For the profile this chapter ran, the table reads:
    """),
    code("""
    print(tk.results.readme_table(back))
    """),
    md("""
    ## The student on a new X-ray

    The same path from the command line: `tbkd predict IMAGE --cam overlay.png` reads any PNG or JPEG
    (any size, any bit depth), extracts the lungs with this profile's U-Net exactly as chapter 01 did,
    runs the distilled student and applies the threshold saved above; `--json` prints one JSON object
    per image. `tbkd export --format onnx` (or `torchscript`) writes the student for deployment and
    checks that the exported file gives the same probabilities. Here is `predict` on one test image,
    from its original file:
    """),
    code("""
    predictor = tk.cli.Predictor(profile)
    record = next(r for r in prep.part("test") if r.label == 1)
    out = predictor.predict(record.path)
    stage4 = dict(zip(preds[tk.results.student_name("kd+cam")]["test"]["keys"],
                      preds[tk.results.student_name("kd+cam")]["test"]["probs"]))[record.key]
    assert abs(out["prob_tb"] - stage4) < 1e-4, "predict must agree with the pipeline"
    print(f"{record.path.name}: P(TB) = {out['prob_tb']:.2f} -> {out['decision']} (threshold {out['threshold']:.2f})")
    """),
    code("""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 3.4))
    ax.imshow(tk.cam.overlay(out["_image"], out["_cam"], alpha=0.4))
    ax.set_title(f"{record.path.name}: P(TB) {out['prob_tb']:.2f} ({out['decision']})\\n"
                 "student's Grad-CAM of the TB class", fontsize=8)
    ax.axis("off")
    tk.viz.save_figure(fig, profile, "05_predict_example");
    """),
    md("""
    ## What this chapter showed

    - the kit's numbers beside the paper's, with the uncertainty that makes the comparison honest;
    - the WHO triage target, checked at a threshold fixed before looking at the test split;
    - what the student saves against its teachers, and how much accuracy that costs;
    - how much the figures move with the split (k-fold) and with the hospital (cross-data-set) — the
      second only where a model beats chance on its own data set.

    *Things to try:* run the whole kit with `PROFILE = "real"` on the NLM data and update the README
    with `scripts/results_table.py --update-readme`; set `N_BOOT = 200` and watch the interval ends
    wobble; compare `STUDENTS = ["kd+cam", "kd", "cam", "ce"]` (chapter 04 trained them all).
    """),
]

build("05_results", cells)
