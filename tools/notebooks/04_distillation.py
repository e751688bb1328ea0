"""Builder of notebooks/04_distillation.ipynb: Grad-CAM knowledge distillation and its ablation."""
from nbbuild import build, code, md, parameters

cells = [
    md("""
    # 04 · Distillation: a small student learns what the teachers know and where they look

    The paper's last step turns the five teachers of chapter 02 and their Grad-CAM maps of
    chapter 03 into one **lightweight, interpretable** TB detector. The student here is
    **MobileNet V3 Small**: 1.5 million parameters with its two-class head, a third of MobileNet V3
    Large's and about a ninetieth of torchvision's VGG16 (a tenth of the small-headed VGG16 of the
    `quick` profile; the table near the end); any model of the kit's registry can take its place.

    A teacher can pass on three things, and the student's loss has one term for each:

    1. **the label** (TB or normal): what any classifier learns from;
    2. **its soft prediction**: *how sure* it is about every image (knowledge distillation,
       Hinton et al. 2015);
    3. **where it looks**: its Grad-CAM map of the TB class (attention distillation, after
       Zagoruyko & Komodakis 2017) — the paper's idea.

    This chapter

    1. writes the loss down, term by term, and explains the temperature and the $T^2$,
    2. chooses the guiding teacher **on the validation split**,
    3. shows the two pieces of machinery the map term needs: a Grad-CAM that can be
       differentiated (and why MobileNet's hard activations are replaced for its second-order form), and an
       augmentation that moves the image and its guide map together,
    4. trains **four students with the same seed and data** — labels only, + soft predictions,
       + maps, + both — and compares them in an **ablation table** with confidence intervals,
       including where the students look,
    5. shows the students' maps next to the teacher's and adds the student to the CAM explorer;
       the other map losses and a fused guide are one parameter away (`OPTIONS`), and no profile
       trains them by default.

    The code lives in `tbkd_helpers` (`distill.py` for the loss and the data, `cam.py` for the
    differentiable Grad-CAM, `pipeline.py` for training and scoring; figures in `viz.py`).
    """),
    parameters("""
    PROFILE = "quick"       # quick | real | full
    DATA_DIR = None         # None: phantoms (quick) or $TBKD_DATA_DIR (real/full)
    SEED = 0                # every random choice derives from it
    GUIDE = None            # the guide: None (the profile rule), best, fusion, lungs, a teacher name, or maps,logits
    CAM_LOSS = "mse"        # the map term D: "mse", "l1" or "at" (attention transfer)
    N_BOOT = 1000           # bootstrap resamples behind each 95 % confidence interval
    RULE = "youden"         # threshold rule, applied on the validation split
    OPTIONS = None          # extra students, a list of (variant, guide, loss); None: none
    SEEDS = 3               # students trained per variant, paired by seed (the seed-to-seed spread)
    PROGRESS = False        # True: progress bars while training (interactive use)
    """),
    code("""
    import numpy as np
    import pandas as pd
    import torch
    import torch.nn.functional as F

    import tbkd_helpers as tk

    profile = tk.config.get_profile(PROFILE, data_dir=DATA_DIR, seed=SEED)
    tk.config.seed_everything(profile.seed)
    prep = tk.data.prepare(profile, progress=False)
    print(f"profile {profile.name!r}: student {profile.student}, {profile.image_size} px, "
          f"{profile.student_epochs} epochs, batch {profile.batch_size}")
    print(f"loss weights: alpha = {profile.kd_alpha:g} (soft predictions, T = {profile.kd_temperature:g}), "
          f"beta = {profile.cam_beta:g} (maps, {CAM_LOSS!r}); guide rule: {GUIDE or profile.guide!r}")
    """, check=True),
    md(r"""
    ## The loss, term by term

    For a training image $x$ with label $y$, the student's logits $z_s$ and its Grad-CAM map of the
    TB class $M_s(x)$, the guide's cached logits $z_t$ and map $M_g(x)$:

    $$
    \mathcal{L} \;=\; \underbrace{\mathrm{CE}\big(z_s,\,y\big)}_{\text{the label}}
    \;+\;\alpha\,T^2\,\underbrace{\mathrm{KL}\Big(\mathrm{softmax}\big(z_t/T\big)\;\Big\|\;
    \mathrm{softmax}\big(z_s/T\big)\Big)}_{\text{the teacher's soft prediction}}
    \;+\;\beta\,\underbrace{D\big(M_s(x),\,M_g(x)\big)}_{\text{where the teacher looks}}
    $$

    **The label.** Cross-entropy, class-weighted as for the teachers (chapter 02).

    **Soft predictions (Hinton et al. 2015).** A label says "TB"; a teacher says "TB, 70 % sure" —
    an ambiguous image and an obvious one get different targets, which tells the student more per
    image than the label alone (Hinton called it *dark knowledge*). Dividing the logits by a
    **temperature** $T > 1$ before the softmax makes the distribution softer: a confident teacher's
    $0.98$ becomes about $0.73$ at $T = 4$, so the student also learns from images the teacher finds
    easy. The KL divergence runs from the teacher's distribution to the student's, as in Hinton's
    paper. **Why $T^2$:** the gradient of the soft term with respect to a student logit is
    $\frac{1}{T}\big(p_s^{T} - p_t^{T}\big)$, and for large $T$ it is about
    $\frac{z_s - z_t}{N T^2}$ ($N$ classes): it shrinks like $1/T^2$. Multiplying by $T^2$ keeps the
    soft term's pull against the label term about the same whatever $T$ is, so $\alpha$ alone sets
    the balance.

    **Where the teacher looks.** $D$ compares the two maps after scaling each to unit length,
    $\hat M = M / \lVert M \rVert_2$, so only the *shape* of the attention counts, not its scale:

    $$
    D_{\mathrm{mse}} = \sum_{ij}\big(\hat M_s - \hat M_g\big)_{ij}^2 = 2 - 2\cos(M_s, M_g),\qquad
    D_{\mathrm{l1}} = \sum_{ij}\big|\hat M_s - \hat M_g\big|_{ij},\qquad
    D_{\mathrm{at}} = \big\lVert \hat M_s - \hat M_g \big\rVert_2 .
    $$

    $D_{\mathrm{mse}}$ lies in $[0, 2]$ for two non-negative maps and in $[0, 4]$ for the signed
    student map used in training (below), whatever the map size; the cell further down prints its
    size against the cross-entropy's at the start. $D_{\mathrm{at}}$ is the distance of
    *attention transfer* (Zagoruyko & Komodakis 2017, eq. 2): the same difference, not squared, so
    its pull does not fade as the student gets close. (Their attention maps are built from a layer's
    activations, $\sum_c |A_c|^2$, with no gradient; here the same distance is applied to Grad-CAM
    maps, the maps the paper distils.)

    Two details of the map term. It is computed on the **TB images** of each batch only
    (`DistillSettings.cam_images`): the map of the TB class explains a TB image, while on a normal
    image the teacher's TB map marks nothing real and would teach noise. And the student's map enters
    the loss **before** Grad-CAM's final ReLU (`differentiable_gradcam(..., relu=False)`): a student
    trained from scratch often starts with a map that the ReLU zeroes everywhere, and a zero map
    passes no gradient, so it could never learn to light up.

    **Why should a student look where the teacher looks?** Zagoruyko & Komodakis found that students
    made to reproduce a teacher's spatial attention learn better than from labels alone: the map is
    an extra target *per pixel*, saying where the evidence is. With a few hundred X-rays a small
    network can score well for the wrong reasons — a marker, a border, a hospital's exposure
    settings; the lung extraction of chapter 01 removes what lies outside the lungs, and the map
    points *within* them. It also serves the paper's second aim, interpretability: a student whose
    maps resemble a checked teacher's is easier to trust. The flip side: the student copies the
    teacher's mistakes as faithfully as its insights — which is why the guide is chosen with care.

    Which terms are on is the **variant**: `ce` (labels only), `kd` (+ soft predictions), `cam`
    (+ maps), `kd+cam` (both):
    """),
    code("""
    for variant in tk.distill.VARIANTS:
        s = tk.pipeline.distill_settings(profile, variant, CAM_LOSS)
        print(f"{variant:>7}: alpha = {s.alpha:g}, beta = {s.beta:g}, T = {s.temperature:g}, D = {s.cam_loss}")
    """, check=True),
    md("""
    ### How α, β, T and the map loss were chosen

    The paper gives none of these numbers. The kit chooses them **on the validation split only**:
    `scripts/tune_student.py` trains the kd+cam student once per setting — the profile's own, then
    one change at a time (the other temperature, 1 or 4; a stronger map term; attention transfer as the map
    loss) — and keeps each one's validation AUC; the
    test split is not read. One seed per setting and a small validation split: differences of a few
    hundredths are within the noise, so the profile moves away from its defaults only for a clear gain
    (`TUNING_MARGIN` in `tbkd_helpers/pipeline.py`; the cell below prints the rule and the table
    where the profile has a tuning run, and says so where it has none).
    """),
    code("""
    tuning, lines = tk.reports.tuning_report(profile)
    print("\\n".join(lines))
    tuning
    """),
    md("""
    ## Which teacher guides

    The teachers of chapter 02 are needed (they are loaded, or trained now if chapter 02 has not run
    on this profile). The guide is chosen by each teacher's **AUC on the validation split** — never
    on test, which would tune the student to the images it is measured on.

    - `"best"`: the teacher with the highest validation AUC guides alone;
    - `"fusion"`: every teacher's map and logits, averaged with weights $\\max(\\mathrm{AUC} - 0.5, 0)$
      normalised to sum to 1 — a teacher at chance level has no say;
    - `"lungs"`: the teacher whose Grad-CAM maps of the validation images put the largest share of
      their mass inside the lungs (chapter 03's in-lung share, measured here on validation) guides
      alone — the teacher that looks where a radiologist would, rather than the one that scores best;
    - two rules joined by a comma, the maps' rule first: `"lungs,best"` teaches the maps of the
      most in-lung teacher and the soft predictions of the best-AUC one. The two terms ask different
      things of a teacher: the soft predictions should be *right*, the maps should look in the
      *right place*, and one teacher need not be the best at both.

    Each profile declares its rule (`profile.guide`); `GUIDE` in the parameters cell overrides it.
    """),
    code("""
    for arch in profile.teachers:
        tk.pipeline.train_teacher(profile, arch, prep, progress=PROGRESS)
    val_auc = tk.pipeline.teacher_val_auc(profile, prep)
    val_in_lung = tk.pipeline.teacher_val_attention(profile, prep)
    weights = {mode: tk.distill.teacher_weights(val_auc, mode) for mode in ("best", "fusion")}
    rule = GUIDE or profile.guide
    mode = tk.pipeline.guide_mode(profile, prep, GUIDE)
    """),
    code("""
    print(f"{'teacher':>18}  val AUC  val in-lung  weight 'best'  weight 'fusion'")
    for arch in profile.teachers:
        print(f"{arch:>18}  {val_auc[arch]:7.3f}  {val_in_lung[arch]:11.2f}  {weights['best'][arch]:13.2f}"
              f"  {weights['fusion'][arch]:15.2f}")
    maps_from, logits_from = tk.distill.guide_sources(val_auc, mode)
    print(f"this profile's rule: {rule!r}: the maps of {maps_from}, the soft predictions of {logits_from}")
    """),
    md("""
    The validation split is small (chapter 02's split table counts it), so the ranking of teachers
    with close AUCs is itself uncertain — two can even tie, and a tie goes to the first in sorted
    order; another seed could crown another teacher. The fused guide hedges that bet.

    Why a `"lungs"` rule? The map term makes the student look where its guide looks, so a guide
    with a high AUC but maps spread over the mediastinum or the image's border teaches the student to
    look there too. On the real X-rays this happened: the best-AUC teacher's maps were no more
    inside the lungs than a uniform map, and so were its students'. `scripts/guide_study.py`
    compares the guides over seeds on the validation split (`results/real/guides.json`): guided by
    the in-lung teacher, the students' maps were far more inside the lungs at the same validation AUC.
    But that teacher was not the most accurate one, and its soft predictions are what the logit term
    copies; so the same study was run again with the guide split (`results/real/guides_split.json`):
    the in-lung teacher's maps with the best-AUC teacher's soft predictions, against the in-lung
    teacher for both. The real profile takes the split guide, `"lungs,best"`, because its students
    scored higher on validation with maps as much inside the lungs. The quick profile keeps `"best"`:
    on phantoms chapter 03 can check the maps against the drawn lesions, and the best teacher's
    peak on them more often than a random pixel would (its pointing game against the chance row).

    ## The guide comes from the cache

    Chapter 03 stored every teacher's Grad-CAM map (TB class) and logits for every training image
    (made now if chapter 03 has not run on this profile). The student reads them from there: **no
    teacher runs while the student trains**, so a student costs no more than its own forward and
    backward passes. The guide for the training images:
    """),
    code("""
    guide_train = tk.pipeline.guide_for_part(profile, prep, GUIDE, "train", progress=PROGRESS)
    guide_name = guide_train.source
    """),
    code("""
    print(f"guide: {guide_name}; {len(guide_train)} training images, maps of {guide_train.cams.shape[1]}x"
          f"{guide_train.cams.shape[2]} px in [0, 1], logits of shape {guide_train.logits.shape}")
    """),
    code("""
    chosen = {"best": max(profile.teachers, key=lambda a: val_auc[a]),
             "lungs": max(profile.teachers, key=lambda a: val_in_lung[a])}
    for half, source in zip(tk.distill.split_guide(rule), (guide_train.maps_source, guide_train.logits_source)):
        assert source == chosen.get(half, source), f"the {half!r} half of the guide is not chosen on validation"
    train_keys = [r.key for r in tk.pipeline.classifier_records(profile, prep, "train")]
    assert guide_train.ids == train_keys, "the guide's rows are not the training images"
    assert not set(train_keys) & {r.key for r in tk.pipeline.classifier_records(profile, prep, "test")}
    print("guide chosen on validation; one guide row per training image, in order; no test image among them")
    """, check=True),
    md("""
    What the soft targets look like: the guide's probability of TB for a few training images at
    $T = 1$ (its ordinary prediction) and at the training temperature. The temperature pulls every
    probability toward 0.5 without changing which side it is on.
    """),
    code("""
    train_records = tk.pipeline.classifier_records(profile, prep, "train")
    T = profile.kd_temperature
    z = torch.from_numpy(guide_train.logits).double()
    p1, pT = torch.softmax(z, 1)[:, 1], torch.softmax(z / T, 1)[:, 1]
    for i in range(6):
        r = train_records[i]
        print(f"{r.key.split('/')[-1]:>18} ({'TB' if r.label else 'normal':>6}): P(TB) {p1[i]:.2f} at T = 1, "
              f"{pT[i]:.2f} at T = {T:g}")
    """),
    md(r"""
    Look how close to 0.5 the targets come at $T = 4$. With many classes, softening reveals which
    *wrong* classes the teacher finds plausible (a "3" that looks a bit like an "8"); with two
    classes there is only one number to soften, and a teacher that is not very confident to begin
    with leaves the student a target of "slightly more TB than not". The temperature is a setting
    (`kd_temperature`); with two classes, $T = 1$ or $2$ is worth trying.

    ## A Grad-CAM you can differentiate

    Grad-CAM (chapter 03) weighs each channel $A^k$ of a layer by the average gradient of the TB
    score with respect to it, and keeps the positive part of the weighted sum:

    $$
    w_k = \frac{1}{hw}\sum_{i,j}\frac{\partial z^{\mathrm{TB}}}{\partial A^k_{ij}},\qquad
    M = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big).
    $$

    To *train* on $M$, the optimiser needs $\partial \mathcal{L}/\partial\theta$ for every weight
    $\theta$. But $M$ depends on the weights twice: through the activations $A^k$ and through the
    channel weights $w_k$ — which are themselves gradients. The loss's gradient therefore contains
    **gradients of gradients** (second-order derivatives). PyTorch computes them when the first
    gradient is taken with `torch.autograd.grad(score, A, create_graph=True)`: the backward pass is
    then recorded as a graph of its own, which the loss's backward pass goes through.
    `pytorch-grad-cam` (used for viewing) detaches its maps into NumPy, so the kit has its own
    batched version, `tk.cam.differentiable_gradcam`, whose maps agree with the library's to about
    1e-6 (`tests/test_cam.py`). It returns the logits of the same forward pass, so the map term costs one
    extra backward pass, not a second forward pass.

    **Why MobileNet's activations had to be swapped.** MobileNet V3 uses *hard* activations,
    cheap piecewise approximations: hard-swish $x\cdot\mathrm{ReLU6}(x+3)/6$ in its blocks and
    hard-sigmoid $\mathrm{ReLU6}(x+3)/6$ inside every squeeze-and-excitation gate. PyTorch computes
    them with fused kernels, and a fused kernel has only the derivatives someone wrote for it. The
    kit replaces them (in every MobileNet it builds) with `Hardswish2` and `Hardsigmoid2`: the same
    functions written with `relu6`, whose derivatives PyTorch can differentiate again. With the
    PyTorch installed here:
    """),
    code("""
    x = torch.linspace(-4, 4, 81, requires_grad=True)
    for act in (torch.nn.Hardsigmoid(), tk.models.Hardsigmoid2(), torch.nn.Hardswish(), tk.models.Hardswish2()):
        (g,) = torch.autograd.grad(act(x).sum(), x, create_graph=True)
        try:
            torch.autograd.grad(g.sum(), x)
            verdict = "has a second derivative"
        except RuntimeError as err:
            verdict = f"RuntimeError: {str(err).splitlines()[0]}"
        print(f"{type(act).__name__:>12}: {verdict}")
    same = (torch.equal(torch.nn.Hardsigmoid()(x), tk.models.Hardsigmoid2()(x))
            and torch.equal(torch.nn.Hardswish()(x), tk.models.Hardswish2()(x)))
    print(f"the replacements compute exactly the same values: {same}")
    """, check=True),
    md("""
    The fused hard-sigmoid has no second derivative, so without the swap the second-order map term
    (`cam_order = "second"`, the `create_graph=True` half of the cell below) would fail on the first
    batch; the first-order term (`"first"`) needs only first derivatives, which the fused kernels
    have. Older PyTorch versions lacked hard-swish's second derivative too; the kit swaps both in
    every MobileNet it builds, whatever the order. The swap changes no value, so a checkpoint
    trained either way loads into the other.

    Now a map term like the training one on a real batch, with a freshly initialised student (here
    on the whole batch and after the ReLU, as chapter 03's maps are; training uses the TB images
    and the signed map). The student's map comes
    from the block at `profile.cam_stride` (stride 8 on `quick`: an 8×8 grid at 64 px); the
    guide's stored map is resized to it by averaging. The cell splits the map
    term's gradient at the student's **first** convolution into the part that flows through the
    activations $A^k$ and the part that flows through the channel weights $w_k$ — the part that
    exists only with `create_graph=True`.
    """),
    code("""
    base = tk.pipeline.classifier_dataset(profile, prep, profile.student, "train")
    batch = next(iter(torch.utils.data.DataLoader(tk.distill.DistillDataset(base, guide_train), batch_size=16)))
    x, y, g_maps, g_logits = batch
    torch.manual_seed(profile.seed)
    fresh = tk.models.build_model(profile.student, seed=profile.seed).train()
    layer = tk.models.target_layer(fresh, profile.student, stride=profile.cam_stride)
    first_conv = next(p for p in fresh.parameters() if p.ndim == 4)
    grads = {}
    for create_graph in (True, False):
        maps, logits = tk.cam.differentiable_gradcam(fresh, layer, x, create_graph=create_graph)
        term = tk.distill.cam_term(maps, g_maps, CAM_LOSS)
        (grads[create_graph],) = torch.autograd.grad(term, first_conv)
    print(f"student maps {tuple(maps.shape)}, guide maps {tuple(g_maps.shape)}, logits {tuple(logits.shape)}")
    print(f"the three terms before training: CE {F.cross_entropy(logits, y):.3f}, "
          f"T^2 KL {tk.distill.kd_loss(logits, g_logits, profile.kd_temperature):.3f}, D {term:.3f}")
    print(f"gradient of D at the first convolution: norm {grads[True].norm():.2e}; through the activations "
          f"alone {grads[False].norm():.2e}, through the channel weights {(grads[True] - grads[False]).norm():.2e}")
    """),
    code("""
    assert grads[True].abs().sum() > 0, "the map term does not reach the first layer"
    assert not torch.allclose(grads[True], grads[False]), "the second-order part is missing"
    print("the map term's gradient reaches the first convolution, and part of it is second-order")
    """, check=True),
    md("""
    That second-order part has a price: its backward pass runs again through every layer after the
    Grad-CAM layer, so a kd+cam step costs more than a plain one (`benchmarks/bench_student.py`
    times both). The setting `profile.cam_order` chooses it: `"second"` (the cell above with
    `create_graph=True`) or `"first"` (the channel weights held constant, as with
    `create_graph=False`: about the cost of a plain step). Whether the student loses anything
    without it is a question for the validation split. A simpler check comes first: can a
    fresh student, trained on the map term alone, fit the guide's maps of a single batch?
    `benchmarks/bench_cam_fit.py` tries both orders from the same start. Second-order, the term
    falls towards 0 within a few dozen steps; first-order it hardly moves: with the Grad-CAM
    weights held constant, every step reshapes the activations for channel weights that the
    step itself then changes. One batch is not training, though. Over 3 seeds paired on the
    validation split, the real profile's first-order students scored as well as the second-order
    ones (within the margin the kit asks of any change of its settings, `TUNING_MARGIN`;
    `benchmarks/bench_cam_order.py`), and on the phantoms of the quick profile
    (`scripts/settings_study.py`) neither order made the students' maps follow the guide's on
    validation images; the first-order students did no worse, in half the time. So the quick and
    real profiles take `"first"` (the full profile keeps `"second"`; the comment on each profile in
    `tbkd_helpers/config.py` gives the figures):
    """),
    code("""
    print(f"this run: cam_order = {profile.cam_order!r}")
    """),
    md("""
    ## The views the student trains on, and the teacher's maps of them

    The students train on augmented images, like the teachers: each X-ray rotated by a few degrees,
    shifted, zoomed, made brighter or darker. But the guide's map and soft prediction were computed
    on the *unmoved* image: move only the image and the student is taught to look a few pixels beside
    the lesion, and to match a confidence the teacher had about another picture. So the kit fixes, for
    every training image, a few augmented **views** (`profile.guide_views`, drawn once from the seed),
    lets the guiding teacher compute its logits and its Grad-CAM map **on each view** (cached like the
    other maps), and each epoch shows the student one of them: the student and the teacher always see
    the same picture (what Beyer et al., 2022, call *consistent* distillation). A profile without
    fixed views (`guide_views = 0`) falls back to warping the cached map with the image.
    Below, the training TB image the guide is surest of, and its first views, each with the guide's
    own map and P(TB) of that view: the map follows the lungs, because the teacher looked again.
    """),
    code("""
    margin = guide_train.logits[:, 1] - guide_train.logits[:, 0]
    i = int(np.argmax(np.where(base.labels.numpy() == 1, margin, -np.inf)))  # the TB image the guide is surest of
    samples = tk.pipeline.view_samples(profile, prep, guide_train, i)
    fig = tk.viz.joint_augmentation(samples, title=f"{base.records[i].key}: views and {guide_train.maps_source}'s maps of them")
    tk.viz.save_figure(fig, profile, "04_joint_augmentation");
    """),
    md("""
    ## Four students, one difference

    The ablation trains the four variants with **the same seed** (so the same initial weights),
    **the same data** (the same lung-extracted training images, shuffled and augmented from the same
    seed), the teachers' recipe (`recipes.STUDENT`: the same optimiser and schedule, every epoch
    run and the best validation AUC kept), and BatchNorm recalibration before every validation
    (MobileNet's trap of chapter 02).
    Only the loss differs. Each student goes to
    `artifacts/<profile>/students/<variant>-<guide>/` and is loaded, not retrained, on a second run.

    The four are independent runs, and a student is too small to keep two cores busy, so on a
    CPU they train side by side, one process of one thread per core (`tbkd_helpers/parallel.py`;
    `TBKD_STUDENT_PROCESSES=1` trains them here, one after the other). A worker changes only the
    thread count: a student trained in one has the weights this process would give it with one
    thread, whatever else runs beside it.
    """),
    code("""
    trained = tk.pipeline.train_students(profile, prep, [{"variant": v, "guide": GUIDE, "cam_loss": CAM_LOSS}
                                                         for v in tk.distill.VARIANTS], progress=PROGRESS)
    students = {v: model for v, (model, _, _) in zip(tk.distill.VARIANTS, trained)}
    histories = {v: hist for v, (_, hist, _) in zip(tk.distill.VARIANTS, trained)}
    for variant, h in histories.items():
        print(f"{variant:>7}: kept epoch {h.best_epoch} of {len(h)}, {sum(h.seconds):.0f} s of training")
    """),
    code("""
    runs = [tk.store.read_json(tk.pipeline.student_dir(profile, v, GUIDE, CAM_LOSS) / "done.json")["settings"]
            for v in tk.distill.VARIANTS]
    for r in runs:
        assert all(r[k] == runs[0][k] for k in ("arch", "n_train", "n_val", "train")), "training settings differ"
        assert all(r["extra"][k] == runs[0]["extra"][k] for k in ("split_sha256", "size", "extraction")), "data differ"
    print("the four students share seed, data, optimiser, schedule and epoch budget; only the loss differs")
    for variant, h in histories.items():
        print(f"{variant:>7}: kept epoch {h.best_epoch} of {len(h)}, validation AUC {h.final['val_auc']:.3f}")
    """),
    md("""
    ### Training curves

    The validation loss (plain cross-entropy) and AUC are comparable between the students; the
    training loss is not — each student minimises its own objective, and the distillation terms add
    their own amounts.
    """),
    code("""
    fig = tk.viz.distill_curves(histories, title=f"students ({profile.student}), {profile.name} profile")
    tk.viz.save_figure(fig, profile, "04_training_curves");
    """),
    md("""
    ## The ablation

    Every student is scored on the **test split** as the teachers were: the decision threshold is
    chosen on the validation split (Youden's J) and applied unchanged; each number comes with its
    95 % bootstrap interval, per data set and pooled (`all`). Two columns ask *where* each student
    looks, on its Grad-CAM maps of the TB class for the test images:

    - **in-lung share**: the share of the map's mass inside the U-Net's lung mask (1: all of it).
      A map spread evenly over the image would score the lungs' share of the image — printed below
      as the chance level;
    - **agreement with guide**: the Pearson correlation, image by image, between the student's map
      and the guiding teacher's map of the *same test image* (computed by the teacher, from the
      chapter 03's teacher maps of the test images, cached the same way), averaged over images. 1: the same shape, 0: unrelated.
      The `ce` and `kd` students never saw a map: their agreement is the baseline the map term
      should lift.

    The first row is the guide itself: the students' ceiling on agreement (1 by definition) and a
    reference for the rest.
    """),
    code("""
    scores = {f"guide: {guide_name}": tk.pipeline.score_guide(profile, prep, GUIDE, rule=RULE, n_boot=N_BOOT)}
    for variant, model in students.items():
        scores[variant] = tk.pipeline.score_student(profile, prep, model, variant, GUIDE, CAM_LOSS, rule=RULE,
                                                    n_boot=N_BOOT)
    test_records = tk.pipeline.classifier_records(profile, prep, "test")
    lungs = tk.pipeline.lung_masks(profile, test_records, profile.image_size, "lung")
    chance_in_lung = float(lungs.mean())
    print(f"{len(test_records)} test images; the lungs cover {chance_in_lung:.0%} of an image (chance in-lung share)")
    """),
    code("""
    table = tk.reports.ablation_table({n: s["test"] for n, s in scores.items()},
                                      {n: s["attention"] for n, s in scores.items()})
    table
    """),
    code("""
    for name, s in scores.items():
        r, a = s["test"][-1], s["attention"][-1]
        print(f"{name:>18}: accuracy {r['accuracy']:.2f}, AUC {r['auc']:.2f}, F1 {r['f1']:.2f}, "
              f"in-lung {a['in_lung']:.2f}, agreement {a['agreement']:.2f}")
    """),
    md("""
    The same numbers, pooled over the data sets, as intervals: each dot is a value, each bar its
    95 % interval. Where the bars overlap, the test split cannot tell the students apart.
    """),
    code("""
    points = tk.reports.ablation_points({n: s["test"] for n, s in scores.items()},
                                         {n: s["attention"] for n, s in scores.items()})
    fig = tk.viz.ablation_intervals(points, reference={"AUC": 0.5, "in-lung share": chance_in_lung,
                                                       "agreement with guide": 0.0})
    tk.viz.save_figure(fig, profile, "04_ablation");
    """),
    code("""
    for quantity in ("accuracy", "AUC", "F1", "in-lung share", "agreement with guide"):
        bars = {v: points[v][quantity] for v in tk.distill.VARIANTS}
        best = max(bars, key=lambda v: bars[v][0])
        apart = [v for v in bars if v != best and bars[v][2] < bars[best][1]]
        verdict = (f"{best} is above {', '.join(apart)} (intervals apart)" if apart
                   else f"{best} is highest, but every other student's interval overlaps its interval")
        print(f"{quantity:>22}: {verdict}")
    """),
    md("""
    ### Reading the ablation honestly

    Read the intervals before the values, and the verdict lines above before any story.

    - **Accuracy and AUC.** Where the students' intervals overlap, the test split cannot tell them
      apart on this one run, and the order of their values may be noise: the paired verdicts over
      seeds below say whether it survives other seeds. Compare them
      with the guide's row too: a student far below its guide has not absorbed what the guide
      knows, whatever its loss.
    - **Sensitivity, specificity and F1** swing more than AUC: they depend on a threshold chosen on
      the few validation images, and a student whose probabilities crowd around 0.5 lands on one
      side or the other of it. The validation AUCs printed earlier can flatter a student for a
      related reason: the kept epoch was chosen on those images. Compare them with the test column.
    - **Agreement with the guide is where the map term should show.** `ce` and `kd` never saw a map,
      so their agreement is the baseline. Compare each map-trained student's interval (`cam`,
      `kd+cam`) with theirs: where it lies above, the map term taught that student to look where the
      teacher looks, on test images it never saw. The verdict line above only says whether the
      highest student's interval lies clear of all the others'; where it does not, this run has not
      shown that the map term moved any student's maps.
    - **In-lung share** against the chance level printed above (a map spread evenly): a student
      above it looks at the lungs more than a blind map would.
    - The bootstrap intervals only cover *which test images* happened to be drawn. Training the same
      variants with other seeds adds the seed-to-seed spread on top: the next section measures it.

    ### Over seeds: the spread one run hides

    One training run is one draw. The seed sets the student's first weights, the order of its
    batches and its augmented views, and rounding differs between CPUs and thread counts (more so
    with the second-order map term's double backward), so even the same seed can land elsewhere on
    another machine. A difference between two students means something only if it survives that spread.

    So each of the four students is trained with `SEEDS` seeds (the first is the run above). The
    seed is shared: for a given seed, `ce`, `kd`, `cam` and `kd+cam` start from the same weights and
    see the same batches, so they are **paired**, and the table gives, besides each student's mean
    ± standard deviation over seeds, its **paired difference** from `ce` with a 95 % Student-t
    interval over the seeds. An interval that contains 0 means: not told apart.

    The teachers are *not* retrained per seed: every student learns from the same five teachers,
    trained once on the fixed split. Retraining them per seed — or per fold of a cross-validation,
    whose held-out images the guiding teachers must never have seen — would cost five times the
    teachers' chapter (`scripts/kfold_students.py` pays that price for the folds, outside the chapters;
    README). How much the teachers themselves move from seed to seed, and whether the
    same one comes out best, is measured apart by `scripts/teacher_seeds.py` (README).
    """),
    code("""
    seeds = tk.pipeline.student_seeds(profile, prep, tk.pipeline.seed_list(profile, SEEDS), guide=GUIDE,
                                     cam_loss=CAM_LOSS, rule=RULE, progress=PROGRESS)
    print(f"{len(seeds['seeds'])} seeds {seeds['seeds']}, guide {seeds['guide']}; test split, data sets pooled")
    tk.reports.seeds_table(seeds)
    """),
    code("""
    print("\\n".join(tk.reports.seeds_verdicts(seeds)))
    """),
    md("""
    These verdict lines are the chapter's conclusion about the students: they are read from the
    paired intervals of this run, not written beforehand. An interval of zero width (the same
    difference in every seed, often a single image) is not a finding: read it as "not enough seeds". The same figures per data set are in
    `results/<profile>/ablation.json` (`seeds`), and chapter 05 carries them into the results table.

    ### Other map losses, and the fused guide

    Two more students can be trained beside the ablation: the same `cam` student (maps only, no soft
    predictions) with the map term computed by attention transfer, and one guided by the
    validation-weighted fusion of all five teachers (`OPTIONS` in the parameters cell, a list of
    `(variant, guide, loss)`; add `("cam", "best", "l1")` for the L1 distance). Each student's
    agreement is measured with *its own* guide's test maps. No profile trains them by default
    (`OPTIONS = None`: the table below then holds the ablation's `cam` student alone): each costs
    as much as a student of the ablation, and a fused guide needs every teacher's maps of every
    view (five times the guide's cost). Try
    `OPTIONS = [("cam", "best", "at"), ("cam", "fusion", "mse")]`; where a profile has a tuning run,
    the tuning table near the top of this chapter compares attention transfer on the validation split.
    """),
    code("""
    option_scores = {f"cam · {rule} · {CAM_LOSS}": scores["cam"]}
    option_runs, option_histories = {}, {}
    options = OPTIONS or []
    trained = tk.pipeline.train_students(profile, prep, [{"variant": v, "guide": g, "cam_loss": loss}
                                                         for v, g, loss in options], progress=PROGRESS)
    for (variant, guide, loss), (model, hist, _) in zip(options, trained):
        name = f"{variant} · {guide} · {loss}"
        option_runs[name] = {"variant": variant, "guide_mode": guide, "cam_loss": loss}
        option_histories[name] = hist
        option_scores[name] = tk.pipeline.score_student(profile, prep, model, variant, guide, loss, rule=RULE,
                                                        n_boot=N_BOOT)
    tk.reports.ablation_table({n: s["test"] for n, s in option_scores.items()},
                               {n: s["attention"] for n, s in option_scores.items()}).xs("all", level="dataset")
    """),
    code("""
    for name, s in option_scores.items():
        r, a = s["test"][-1], s["attention"][-1]
        print(f"{name:>20}: AUC {r['auc']:.2f}, F1 {r['f1']:.2f}, in-lung {a['in_lung']:.2f}, "
              f"agreement with its guide ({s['guide']}) {a['agreement']:.2f}")
    """),
    md("""
    With `OPTIONS` set, the table gains one row per extra student; with `OPTIONS = None` it holds
    the ablation's `cam` student alone, with the figures of its row in the ablation table. Compare
    each extra student's values and intervals with that first row. What to look for on real data: L1 and attention transfer keep pulling
    when the maps are already close (their gradients do not shrink with the difference, unlike the
    squared error's), which tends to buy agreement at some cost to the label term; the fused guide's
    maps are smoother (an average of several opinions, weighted by validation AUC), and its soft
    targets less tied to one teacher's quirks.

    ## Where the students look

    Rows: test images — the TB images the guide is surest of and the normal image it is surest of.
    Columns: the X-ray (lungs outlined in cyan, the phantoms' known lesions in red), the guiding
    teacher's map, and each student's map of the TB class. A panel's title gives that model's P(TB),
    red when its decision was wrong. Check the gallery against the agreement column above, which says whether, in this run, any student's maps took the guide's shape
    while `ce`'s and `kd`'s go their own way.
    """),
    code("""
    picks = tk.reports.distill_gallery_picks([r.label for r in test_records], scores[f"guide: {guide_name}"]["probs"])
    rows = tk.reports.distill_gallery_rows(test_records, tk.pipeline.classifier_dataset(profile, prep, profile.student,
                                                                                        "test").images,
                                            scores, picks, lungs=lungs,
                                            lesions=tk.pipeline.lung_masks(profile, test_records, profile.image_size,
                                                                           "lesion"))
    fig = tk.viz.cam_gallery(rows, list(scores), cell=1.6)
    tk.viz.save_figure(fig, profile, "04_gallery");
    """),
    md("""
    ## What the student costs

    The point of distilling: the student should be much lighter than the teachers. Parameters,
    FLOPs and CPU latency (one image, this machine; read the ratios, not the milliseconds):
    """),
    code("""
    costs = {profile.student: {"size": profile.image_size, **tk.pipeline.cost(students["kd+cam"], profile.image_size)}}
    for arch in profile.teachers:
        teacher = tk.pipeline.load_classifier(tk.pipeline.teacher_dir(profile, arch) / "best.pt")
        costs[arch] = {"size": profile.size_for(arch), **tk.pipeline.cost(teacher, profile.size_for(arch))}
    tk.reports.cost_table(costs)
    """),
    code("""
    for arch in profile.teachers:
        ratio = costs[arch]["params"] / costs[profile.student]["params"]
        print(f"{arch:>18}: {ratio:5.1f} times the student's parameters")
    """, check=True),
    md("""
    ## The student in the CAM explorer

    The explorer of chapter 03, with the four students added beside the teachers. It opens on the
    guiding teacher (model A) next to the `kd+cam` student (model B), on the first TB image of the
    gallery: pick another image, another student or teacher, another CAM method, or switch the lung
    and lesion outlines.
    Each student's threshold is the one chosen on validation above.
    """),
    code("""
    explorer = tk.widgets.explorer_for_profile(profile, prep)
    for name in tk.distill.VARIANTS:
        s = scores[name]
        by_key = dict(zip([r.key for r in test_records], s["probs"]))
        explorer.add_model(f"student {name}", students[name], profile.student, size=profile.image_size,
                           probs=[by_key[k] for k in explorer.state.keys], threshold=s["threshold"])
    explorer.set(a=guide_train.maps_source if guide_train.maps_source in explorer.state.models else profile.teachers[0],
                 b="student kd+cam", label="TB", image=test_records[picks["TB"][0]].key)
    explorer
    """),
    md("""
    (A notebook viewed without a running kernel shows no widget; here is the explorer's current
    picture.)
    """),
    code("""
    explorer.figure
    """),
    md("""
    ## Handing over to chapter 05

    The ablation goes to `results/<profile>/ablation.json`: the guide (mode, teacher, weights,
    validation AUCs), the loss settings, and for every student its kept epoch, validation AUC, test
    metrics with intervals, in-lung share and agreement, per data set. Chapter 05 sets the students
    beside the teachers and the paper.
    """),
    code("""
    report = {"profile": profile.name, "seed": profile.seed, "student": profile.student, "rule": RULE,
              "n_boot": N_BOOT, "ci_level": 0.95, "chance_in_lung": round(chance_in_lung, 4),
              "guide": {"mode": rule, "source": guide_name, "weights": guide_train.weights,
                        "logit_weights": guide_train.logit_weights or guide_train.weights,
                        "val_auc": val_auc, "val_in_lung": val_in_lung},
              "loss": {"alpha": profile.kd_alpha, "beta": profile.cam_beta, "temperature": profile.kd_temperature,
                       "cam_loss": CAM_LOSS},
              "guide_scores": tk.pipeline.ablation_entry(scores[f"guide: {guide_name}"]),
              "students": {v: tk.pipeline.ablation_entry(scores[v], histories[v], variant=v, guide_mode=rule,
                                                         cam_loss=CAM_LOSS) for v in tk.distill.VARIANTS},
              "options": {n: tk.pipeline.ablation_entry(option_scores[n], option_histories[n], **run)
                          for n, run in option_runs.items()},
              "seeds": seeds}
    path = tk.store.write_json(profile.results / "ablation.json", report)
    assert set(tk.store.read_json(path)["students"]) == set(tk.distill.VARIANTS)
    print(f"wrote {path.name}: {len(report['students'])} students, {len(report['options'])} options")
    """, check=True),
    md("""
    ## What's next

    Chapter 05 gathers every number of the kit into one results table beside the paper's.

    *Things to try:* `GUIDE = "fusion"` (or `"lungs"`, `"best"`) for the whole ablation; `CAM_LOSS = "at"`; a stronger map
    term (`tk.config.get_profile(PROFILE, cam_beta=5)`) and watch agreement rise and, perhaps, AUC
    fall; another temperature (`kd_temperature=1` turns the soft targets back into the teacher's
    plain predictions); another student (`student="resnet18"`: any model of the registry); and,
    before believing any difference, other seeds (`SEED = 1, 2, …`).
    """),
]

build("04_distillation", cells)
