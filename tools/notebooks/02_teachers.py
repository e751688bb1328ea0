"""Builder of notebooks/02_teachers.ipynb: the paper's five teacher CNNs."""
from nbbuild import build, code, md, parameters

cells = [
    md("""
    # 02 · The teachers: five CNNs trained to detect tuberculosis

    The paper trains five well-known convolutional networks (CNNs) on the lung-extracted X-rays of
    chapter 01 — **DenseNet121, Inception V3, ResNet18, MobileNet V3 and VGG16** — and later uses
    their attention maps to teach a small student (chapters 03 and 04). Here they are trained as
    *teachers*: each far larger than the student will be, and each looking at the image in its own
    way.

    This chapter

    1. meets the five architectures and what makes each one different,
    2. trains each of them the same way (and explains every choice: training from scratch, class
       weighting, every epoch of the schedule with the best validation AUC kept, BatchNorm
       recalibration),
    3. chooses each teacher's **decision threshold on the validation split** and only then looks at
       the test split,
    4. reports accuracy, AUC, sensitivity, specificity, precision and F1 with **bootstrap 95 %
       confidence intervals**, per data set, with ROC curves and confusion matrices,
    5. measures what each teacher costs: parameters, FLOPs, size on disk and CPU latency.

    The code lives in `tbkd_helpers` (`models.py`, `train.py`, `metrics.py`, `pipeline.py`; figures
    in `viz.py`); the cells below only call it.
    """),
    parameters("""
    PROFILE = "quick"       # quick | real | full
    DATA_DIR = None         # None: phantoms (quick) or $TBKD_DATA_DIR (real/full)
    SEED = 0                # every random choice derives from it
    N_BOOT = 1000           # bootstrap resamples behind each 95 % confidence interval
    RULE = "youden"         # threshold rule on the validation split (the others are named below)
    PROGRESS = False        # True: progress bars while training (interactive use; see below)
    """),
    code("""
    import math

    import pandas as pd

    import tbkd_helpers as tk

    profile = tk.config.get_profile(PROFILE, data_dir=DATA_DIR, seed=SEED)
    tk.config.seed_everything(profile.seed)
    prep = tk.data.prepare(profile, progress=False)
    print(f"profile {profile.name!r}: {len(profile.teachers)} teachers, {profile.image_size} px "
          f"({profile.inception_size} px for Inception V3), {profile.teacher_epochs} epochs, batch {profile.batch_size}, "
          f"starting weights: {profile.weights}")
    """, check=True),
    md("""
    ## The five architectures

    All five were designed for ImageNet photographs and are taken from `torchvision`. They differ in
    how a layer passes information to the next:

    - **DenseNet121** (Huang et al., 2017): inside a *dense block* every layer receives the feature
      maps of **all** the layers before it, concatenated. Features are reused instead of relearned,
      so 121 layers need only about 7 million parameters.
    - **Inception V3** (Szegedy et al., 2016): each *inception module* runs several convolutions of
      different sizes (1×1, 3×3, 5×5 factorised into cheaper ones, pooling) **side by side** and
      concatenates their outputs: each stage looks at several scales at once. It was built for
      299-pixel images and needs at least 75.
    - **ResNet18** (He et al., 2016): each *residual block* adds its input to its output,
      x + F(x), so a block only has to learn a correction, and the gradient has a short path back to
      the first layers. That shortcut is what made very deep networks trainable.
    - **MobileNet V3 Large** (Howard et al., 2019): built for phones. A *depthwise-separable*
      convolution filters each channel on its own and then mixes channels with a 1×1 convolution,
      which costs a fraction of an ordinary convolution; *squeeze-and-excitation* re-weights the
      channels by what the whole image contains. (Its small sibling, MobileNet V3 Small, is the
      student of chapter 04.)
    - **VGG16** (Simonyan & Zisserman, 2015): the plain deep network — 13 layers of 3×3
      convolutions with max-pooling in between, then three fully connected layers; no shortcuts,
      no batch normalisation. The simplest design here and the heaviest: torchvision's VGG16 ends
      in fully connected layers of 4096 units that hold about 120 of its 134 million parameters (with
      the kit's two-class head). They
      were made for 224-px inputs, whose last feature map is 7×7. At the `quick` profile's 64 px
      it is 2×2, and the network copies each value into a 7×7 grid so that the 102 million
      weights of the first layer fit; updating them made VGG16 two thirds of this chapter's time.
      So `quick` builds VGG16 with a **small head** (`profile.vgg_head = "gap"`): the average of
      each of the 512 channels, then the same three layers at width 512. The 13 convolutions, and
      with them the Grad-CAM layer, are VGG16's own. `real` uses the small head too (at 112 px the last map is only 3×3), and
      adds batch normalisation (`vgg16_bn`): on the real X-rays the plain VGG16 had not started to
      learn after half of its 10 epochs from random weights (its training loss stayed at ln 2).
      `full`, at the paper's 224 px, keeps the paper's VGG16 and torchvision's head.

    Every model in the kit takes the same input: **one channel** (an X-ray is grey) of values in
    [0, 1]. The first convolution is cut down to one input channel and the normalisation happens
    inside the model, so no caller can forget it. The last layer is replaced by two outputs,
    *normal* and *TB*.
    """),
    code("""
    for arch in profile.teachers:
        size = profile.size_for(arch)
        info = tk.models.model_info(tk.pipeline.new_model(profile, arch), size)
        print(f"{arch:>18}: input {size} px, {info['params']:>11,} parameters, "
              f"{info['flops'] / 1e9:6.3f} GFLOPs per image")
    """, check=True),
    md("""
    Parameters and FLOPs (floating-point operations of one forward pass, a multiply-add counted as
    two) do not go together: with its small head VGG16 has fewer parameters than Inception V3 but
    six times its FLOPs (all thirteen of its convolutions are wide), and DenseNet121 has fewer
    parameters than ResNet18 but more FLOPs, because its many thin layers run at high resolution.
    FLOPs grow with the image area; the parameter count does not change with the image size.

    ## The data they learn from

    The teachers see the **lung-extracted** images of chapter 01 (made now if chapter 01 has not run
    on this profile), resized to the input size above. They learn on the **train** split, choose
    their best epoch and decision threshold on the **val** split, and are measured once on the
    **test** split.
    """),
    code("""
    extraction = tk.pipeline.lungs(profile, prep, progress=PROGRESS)
    print(f"{len(extraction.entries)} lung-extracted images ready")
    """),
    code("""
    datasets = sorted({r.dataset for r in prep.records})
    rows = []
    for part in ("train", "val", "test"):
        for ds in datasets:
            recs = prep.part(part, ds)
            rows.append({"split": part, "dataset": ds, "images": len(recs), "TB": sum(r.label for r in recs)})
    counts = pd.DataFrame(rows)
    print(counts.to_string(index=False))
    """, check=True),
    md("""
    ## How every teacher is trained

    All five go through the same loop (`tk.train.fit`), with the same recipe, declared once in
    `tbkd_helpers/recipes.py` (`recipes.TEACHER`) and used by every run that trains a teacher:

    - **Starting weights.** One setting chooses them (`profile.weights`, or `make reproduce
      WEIGHTS=...`): `random`; `imagenet`, torchvision's ImageNet weights for every teacher and the
      student; or `cxr`, torchxrayvision's chest-X-ray DenseNet121 for the DenseNet teacher (the
      others have no such weights and take ImageNet's). What pretraining is worth, measured by
      Idiap's bob.med.tb for DenseNet-121 on Shenzhen (AUC, 10-fold cross-validation): **0.905**
      from random weights, **0.946** from ImageNet, **0.979** from ImageNet and then NIH
      ChestX-ray14. With a few hundred X-rays, a network that already knows edges and textures, or
      better chest X-rays, learns much more from them; the paper most likely started from ImageNet,
      and the `full` profile does. The kit's own `quick` and `real` profiles start from random
      weights: they must run offline (weights are a download), and a from-scratch teacher is the
      honest baseline for what distillation adds. Offline, the files are found in
      `$TBKD_WEIGHTS_DIR` or the usual caches, or the run stops before it starts, naming the missing
      file. Gray X-rays enter RGB-pretrained networks through their first convolution with its three
      colour kernels summed, and are normalised as each weight set expects (ImageNet's mean and
      spread, or torchxrayvision's [-1024, 1024] range). From scratch the networks need enough *steps* to get going:
      the `quick` profile gives them 8 epochs of batches of 8 phantoms (128 steps); with a quarter
      of that, three of the five stayed near chance. Even so, not every teacher need clear chance on
      the test split: compare each AUC interval with 0.5 in the table below.
    - **Optimiser:** AdamW with a *one-cycle* learning-rate schedule (a warm-up, then a cosine decay
      to almost zero). VGG16 gets a smaller peak learning rate (2·10⁻⁴ instead of 10⁻³): without batch
      normalisation it diverges from scratch at the larger one.
    - **Epochs:** the profile's count for every teacher but one. MobileNet V3 Large learns slowest
      from random weights: on the real X-rays, in the profile's epochs, it kept its last epoch and
      stayed well below the other four, and another learning rate did not help. It trains **twice
      the profile's epochs** (`recipes.TEACHER.epochs_by_arch`), the schedule stretched over them;
      it is the cheapest teacher, so that costs little. The choice was made on the validation split,
      over three seeds, by `scripts/teacher_epochs_study.py` (`results/real/teacher_epochs.json`;
      the README gives its figures). The recipe cards below show each teacher's count.
    - **Augmentation:** each training image is shown slightly rotated, shifted, zoomed, brighter or
      darker every epoch, so the network cannot memorise pixels.
    - **Class weighting:** the loss of each class is weighted by the inverse of its frequency in the
      training split, so that a network cannot score well by calling everything the majority class.
      (Montgomery has 58 TB images in 138; pooled with Shenzhen the sets are nearly balanced, and the
      phantoms exactly so — then the weights are 1.)
    - **Every epoch runs; the best one is kept.** After every epoch the network is scored on the
      validation images by its AUC (defined below), and the **best epoch is kept**, not the last.
      Training is never stopped early: the one-cycle schedule only anneals the learning rate in
      its last epochs, and a run stopped before then keeps a network trained at a high learning
      rate (in an earlier version of this kit early stopping kept the *first* epoch of three
      teachers on the real data). AUC rather than accuracy, because accuracy depends on a
      threshold that has not been chosen yet.
    - **A quiet start.** Each network's last layer starts at small random weights, so its first
      answers are near 50/50. torchvision's Inception V3 draws that layer ten times larger; from
      scratch it then started with a loss above 2 and never recovered in a short training.
    - **BatchNorm recalibration.** Batch normalisation layers normalise each channel with the mean
      and variance of the current batch while training, and with *running* averages of them at test
      time. Those averages follow the changing weights with a delay set by their *momentum*;
      torchvision's MobileNet V3 uses 0.01, tuned for hundreds of thousands of steps. After a few
      hundred steps from scratch the averages still mostly describe the random initial network: in
      this kit's first experiments a MobileNet V3 predicted **one class for every test image**
      (accuracy 0.455) while its AUC was 0.80–0.85. So before every validation the running
      statistics are **recomputed** from the training images (a pass without gradients; the weights
      do not change; at most 256 images, one fixed random draw, which halves the pass's cost on the
      real data and moved no validation AUC by more than 0.01 in `scripts/bn_subset_study.py`), and
      the kit trains MobileNets from scratch with PyTorch's usual momentum (`0.1`).
      VGG16 has no batch normalisation: the recipe cards below list the recalibration for every
      teacher, and for VGG16 it does nothing.

    Each teacher's checkpoints go to `artifacts/<profile>/teachers/<arch>/`: `last.pt` after every
    epoch (a stopped run resumes from it and ends with exactly the same weights), `best.pt` for the
    kept epoch, and `done.json` when finished — a second run of this chapter loads instead of
    training.
    """),
    code("""
    for arch in profile.teachers:
        s = tk.pipeline.teacher_settings(profile, arch)
        print(f"{arch:>18}: " + tk.recipes.recipe_card(tk.recipes.TEACHER, s.epochs, s.batch_size, arch))
    """, check=True),
    md("""
    ### What the `real` profile trades against the paper

    The paper trains at 224 px (299 px for Inception V3), on a GPU. The `real` profile has to run
    the whole kit on the NLM data within 90 minutes on a 2-core laptop CPU, where one training image
    at 128 px (forward and backward, batch 32) costs VGG16 about 271 ms, Inception V3 (at 160 px)
    73 ms, DenseNet121 65 ms, ResNet18 29 ms and MobileNet V3 Large 14 ms — VGG16 alone is 60 % of
    the teachers' time. So `real` trains at **112 px (144 px for Inception V3) for 10 epochs (20 for
    MobileNet V3 Large), from random weights**. What that costs: a 112-px lung crop keeps a quarter of the paper's pixels, so
    small lesions blur; ten epochs from scratch leave the teachers still improving when they stop;
    and without ImageNet weights the networks learn every filter from about 560 training X-rays.
    The `full` profile restores the paper's sizes and trains 40 epochs, for a GPU
    (`make reproduce PROFILE=full`), from ImageNet weights; `make reproduce PROFILE=real
    WEIGHTS=imagenet` gives the `real` sizes the same start where the weights can be had.

    Training the five (a few minutes on the `quick` profile on a 2-core CPU, VGG16 a third of it). One line appears as each teacher finishes; set `PROGRESS = True` in the parameters cell for
    progress bars per epoch (they are off by default because a cell that runs for minutes sends
    thousands of bar updates, more than a headless run such as the notebook tests keeps).
    """),
    code("""
    models, histories = {}, {}
    for arch in profile.teachers:
        models[arch], h = tk.pipeline.train_teacher(profile, arch, prep, progress=PROGRESS)
        histories[arch] = h
        print(f"{arch:>18}: kept epoch {h.best_epoch} of {len(h)}, validation AUC {h.final['val_auc']:.3f}, "
              f"{sum(h.seconds):.0f} s of training", flush=True)
    """),
    md("""
    ## Training curves

    Left: the training loss (class-weighted cross-entropy, on augmented images); middle: the
    validation loss; right: the validation AUC, the number the best epoch is chosen by (ringed). What
    to look for: a training loss that falls while the validation loss rises is **overfitting**; a
    validation AUC near 0.5 (the dotted line) means the network ranks TB and normal images no better
    than chance. A loss that stays at $\\ln 2 \\approx 0.69$ means the network still answers close to 50/50 for
    every image: it may already *rank* the images (compare its validation AUC), but its probabilities
    have not yet moved away from one half. Plain deep networks without batch normalisation or shortcuts
    (VGG16) are the slowest to get going from random weights, which is one reason the later
    architectures added them. With a short training from scratch and the few validation images of the split table,
    the curves are short and jumpy — one image more or less on the right side moves the AUC by
    several hundredths; the `real` and `full` profiles train longer on more images.
    """),
    code("""
    fig = tk.viz.training_curves(histories, title=f"teachers, {profile.name} profile")
    tk.viz.save_figure(fig, profile, "02_training_curves");
    """),
    md("""
    ### Seeing the BatchNorm trap

    What would MobileNet V3 have predicted **without** the recalibration? `lagging_bn` copies the
    trained network and lets its BatchNorm running statistics follow the training batches with
    torchvision's momentum 0.01, for as many steps as the training took — the same weights, only the
    lagging averages. Then both versions score the validation images.
    """),
    code("""
    arch = "mobilenet_v3_large"
    if arch in models:
        train_plain = tk.pipeline.classifier_dataset(profile, prep, arch, "train")
        val_ds = tk.pipeline.classifier_dataset(profile, prep, arch, "val")
        steps = len(histories[arch]) * math.ceil(len(train_plain) / profile.batch_size)
        lagging = tk.pipeline.lagging_bn(models[arch], train_plain, steps=steps, seed=profile.seed)
        for name, model in (("recalibrated (kept)", models[arch]), (f"lagging ({steps} steps)", lagging)):
            probs, labels = tk.train.predict(model, val_ds)
            print(f"{name:>22}: AUC {tk.metrics.classification_report(labels, probs)['auc']:.2f}, "
                  f"probabilities from {probs.min():.3f} to {probs.max():.3f}, "
                  f"{(probs >= 0.5).mean():.0%} of the images called TB at 0.5")
    """),
    md("""
    With lagging statistics the network's internal activations are normalised with numbers that
    describe a different network, and its output barely depends on the image any more: every image
    gets (almost) the same probability, so everything lands in one class. Recalibrating costs one
    pass over the training images and removes the problem.

    ## Choosing the threshold — on validation, never on test

    A network outputs a **probability** of TB. To call an image "TB" or "normal" we need a
    threshold *t* (TB when the probability is at least *t*), and every metric below except the AUC
    depends on it. 0.5 is not special: class weighting, a short training or a shifted data set all
    move the probabilities.

    The rule here (`RULE = "youden"`): on the **validation split, both data sets pooled**, take the
    threshold that maximises **Youden's J = sensitivity + specificity − 1** — the point of the ROC
    curve farthest above the chance diagonal (ties: the highest threshold). Pooled, because the
    validation split is small (the split table above counts its images): one
    threshold per data set would be chosen on almost nothing — and a detector in use does not know
    which hospital an image comes from. Other rules are one word away: `"sens>=0.9"` takes the
    highest threshold that still finds 90 % of the TB images (the WHO's target for a TB triage
    test), `"0.5"` a fixed threshold.

    The threshold is then applied **unchanged** to the test split. Choosing it on the test images
    would tune the result to exactly the images it is measured on and report an optimistic number;
    the test split is used for the final numbers only.
    """),
    code("""
    preds = {arch: tk.pipeline.predictions(profile, tk.pipeline.teacher_dir(profile, arch), arch, prep,
                                           model=models[arch])
             for arch in profile.teachers}
    results = {arch: tk.pipeline.evaluate(preds[arch], rule=RULE, n_boot=N_BOOT, seed=profile.seed)
               for arch in profile.teachers}
    thresholds = {arch: rows[0]["threshold"] for arch, rows in results.items()}
    for arch in profile.teachers:
        val = tk.metrics.classification_report(preds[arch]["val"]["labels"], preds[arch]["val"]["probs"],
                                               thresholds[arch])
        print(f"{arch:>18}: threshold {thresholds[arch]:.3f} (on {val['n']} validation images: "
              f"AUC {val['auc']:.2f}, sensitivity {val['sensitivity']:.2f}, specificity {val['specificity']:.2f})")
    """),
    code("""
    for arch, rows in results.items():
        val = preds[arch]["val"]
        from_val = tk.metrics.choose_threshold(val["labels"], val["probs"], rule=RULE)
        assert all(r["threshold"] == round(from_val, 4) for r in rows), f"{arch}: threshold not from validation"
        assert set(val["keys"]).isdisjoint(preds[arch]["test"]["keys"]), f"{arch}: validation and test overlap"
        auc = histories[arch].final["val_auc"]
        assert 0 <= auc <= 1, f"{arch}: validation AUC {auc} is not a number in [0, 1]"
    print("every threshold was chosen on the validation split; validation and test images are disjoint")
    """, check=True),
    md("""
    ## The results, with confidence intervals

    Each metric on the **test split**, per data set and pooled (`all`), at the validation-chosen
    threshold. Positive means TB:

    - **accuracy**: the share of images classified correctly;
    - **AUC** (area under the ROC curve): the probability that a random TB image gets a higher score
      than a random normal one — 0.5 is chance, 1 perfect; it needs no threshold;
    - **sensitivity** (recall): the share of TB images found; **specificity**: the share of normal
      images cleared;
    - **precision**: the share of "TB" calls that are TB; **F1**: the harmonic mean of precision and
      sensitivity.

    **Confidence intervals.** Each number is followed by its 95 % interval, `0.91 [0.86, 0.95]`. It
    comes from the *bootstrap*: the test images are resampled with replacement `N_BOOT` times
    (within each class, so every resample keeps the test set's mix of TB and normal), the metric is
    recomputed on each resample, and the middle 95 % of those values is the interval. It answers
    "how much would this number move on another test set of the same size?". The threshold and the
    network stay fixed, so it does not include the variation from training again with another seed.
    That second spread is measured apart, because it costs a whole chapter per seed:
    `scripts/teacher_seeds.py` trains every teacher again with other seeds on the same split and
    reports each one's mean ± standard deviation over the seeds, its paired difference from the
    teacher chosen here, and how often each teacher came out best on validation (README, "What is
    exact and what varies").

    **Read the width before the value.** A perfect score gives a zero-width interval (`1.00 [1.00,
    1.00]`): every resample is perfect too, and that is not certainty (`1.00 [0.98, 1.00]` is a
    score just below perfect, rounded up). Otherwise a small test set
    gives a wide interval, and two teachers
    whose intervals overlap broadly are not shown to differ.
    """),
    code("""
    test = counts[counts.split == "test"]
    for row in test.itertuples():
        print(f"{row.dataset}: {row.images} test images ({row.TB} TB): one image moves the accuracy by "
              f"{1 / row.images:.3f}, one TB image the sensitivity by {1 / max(row.TB, 1):.3f}")
    """, check=True),
    code("""
    table = tk.reports.metrics_table(results, index_name="teacher")
    table
    """),
    code("""
    for arch, rows in results.items():
        print(f"{arch:>18}: " + "; ".join(f"{r['dataset']} accuracy {r['accuracy']:.2f}, AUC {r['auc']:.2f}"
                                          for r in rows))
    """),
    code("""
    widths = {(arch, r["dataset"]): r["accuracy_hi"] - r["accuracy_lo"] for arch, rows in results.items() for r in rows}
    for ds in [r["dataset"] for r in results[profile.teachers[0]]]:
        w = [v for (a, d), v in widths.items() if d == ds]
        print(f"{ds:>10}: the accuracy intervals are {min(w):.2f} to {max(w):.2f} wide")
    """),
    md("""
    On the `quick` profile the test sets are tiny (the lines above count them and say what one
    image is worth), so the intervals are very wide, and teachers whose intervals overlap broadly
    cannot be told apart. The numbers show how the teachers rank on phantoms, not how they would do
    on real X-rays. The paper reports 91.2 % accuracy on Shenzhen and 85.7 % on Montgomery (for its
    lightweight detector, as far as the abstract tells); with the real data sets the test split holds
    about 132 Shenzhen and 28 Montgomery images, and even there a Montgomery accuracy near 86 % is
    uncertain by about $\\pm 2\\sqrt{0.86 \\cdot 0.14 / 28} \\approx \\pm 0.13$.

    ## ROC curves

    A ROC curve shows every threshold at once: each point is (1 − specificity, sensitivity) at one
    threshold, from "nothing is TB" at the bottom left to "everything is TB" at the top right. The
    closer a curve hugs the top-left corner, the better; the diagonal is chance. The dot on each curve
    is where the validation-chosen threshold lands on the **test** images — on a small test set it
    need not be the curve's best point.
    """),
    code("""
    curves = tk.reports.roc_by_dataset({arch: p["test"] for arch, p in preds.items()}, thresholds)
    fig = tk.viz.roc_curves(curves)
    tk.viz.save_figure(fig, profile, "02_roc");
    """),
    md("""
    ## Confusion matrices

    The counts behind every threshold metric: rows are the true class, columns the prediction. Top
    left are the normal images cleared (true negatives), bottom right the TB images found (true
    positives); the off-diagonal cells are the mistakes — top right false alarms, bottom left missed
    TB, the costly kind in screening. Correct cells are blue, mistakes red, and the shade of each
    cell is its share of the true class: a dark blue diagonal is what a good detector shows.
    """),
    code("""
    fig = tk.viz.confusion_grid([{"model": arch, **r} for arch, rows in results.items() for r in rows])
    tk.viz.save_figure(fig, profile, "02_confusion");
    """),
    md("""
    ## What the teachers cost

    The student of chapter 04 has to be *lightweight*; here is what "heavy" means. Parameters decide
    the size on disk (4 bytes each in float32); FLOPs and the network's shape decide the time. The
    latency is the median wall-clock time of one image (batch 1) on this machine's CPU, at the
    profile's input size — it changes from machine to machine and run to run, so read the ratios,
    not the milliseconds. FLOPs grow with the image's area: at the paper's sizes (224 px, 299 px for
    Inception V3) each count is the square of the size ratio larger. The parameters stay the same,
    except VGG16's, whose head per profile is different (the first table of this chapter).
    """),
    code("""
    costs = {arch: {"size": profile.size_for(arch), **tk.pipeline.cost(models[arch], profile.size_for(arch))}
             for arch in profile.teachers}
    tk.reports.cost_table(costs)
    """),
    md("""
    ## Handing over to chapter 03

    The teachers' numbers go to `results/<profile>/teachers.json`: for each teacher its input size,
    kept epoch, validation AUC, threshold (and the rule that chose it), cost, and every test metric
    with its interval. Chapter 03 computes the teachers' Grad-CAM maps from the checkpoints in
    `artifacts/<profile>/teachers/`; chapter 04 picks the guiding teacher by validation AUC, never
    by test.
    """),
    code("""
    report = {"profile": profile.name, "seed": profile.seed, "rule": RULE,
              "threshold_chosen_on": "validation split, data sets pooled", "n_boot": N_BOOT, "ci_level": 0.95,
              "teachers": {arch: {"input_size": profile.size_for(arch), "best_epoch": histories[arch].best_epoch,
                                  "epochs_run": len(histories[arch]), "val_auc": histories[arch].final["val_auc"],
                                  "threshold": thresholds[arch], "cost": costs[arch], "test": results[arch]}
                           for arch in profile.teachers}}
    path = tk.store.write_json(profile.results / "teachers.json", report)
    assert tk.store.read_json(path)["teachers"].keys() == set(profile.teachers)
    print(f"wrote {path.name} with {len(report['teachers'])} teachers")
    """, check=True),
    md("""
    ## What's next

    Chapter 03 asks each teacher *where* it looked: Grad-CAM maps of the TB class over the lungs,
    compared between teachers and, on phantoms, with the known lesions.

    *Things to try:* set `RULE = "sens>=0.9"` and watch sensitivity rise and specificity fall;
    set `N_BOOT = 200` and see the interval ends wobble; train longer
    (`teacher_epochs=` more than the number printed at the top, e.g. `tk.config.get_profile(PROFILE, teacher_epochs=16)`) and compare the curves; on a machine with
    internet, `make reproduce PROFILE=real WEIGHTS=imagenet` (or `WEIGHTS=cxr`).
    """),
]

build("02_teachers", cells)
