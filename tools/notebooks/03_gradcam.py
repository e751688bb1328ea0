"""Builder of notebooks/03_gradcam.ipynb: where the teachers look, drawn and measured."""
from nbbuild import build, code, md, parameters

cells = [
    md(r"""
    # 03 · Grad-CAM: where do the teachers look?

    Chapter 02 trained five CNNs to detect tuberculosis. A probability alone does not say *why*
    a network called an X-ray TB: it may have found the lesion, or a shortcut (the edge of the
    lung mask, the brightness of the film). The paper looks at each teacher's **Grad-CAM**
    attention map, and then (chapter 04) uses those maps to teach a small student where to look.

    This chapter

    1. explains Grad-CAM and computes it, in batches, for every teacher;
    2. writes the **cache** of teacher maps and logits for every training image that chapter 04's
       distillation reads (so that no teacher has to run while the student trains);
    3. shows the same X-rays under all five teachers, for true positives, false positives and
       false negatives;
    4. **measures** the maps instead of only looking at them: how much of each map lies in the
       lungs, whether its peak lands on a lesion, whether the model's confidence really depends on
       the pixels it points at, and how much the teachers agree;
    5. ends with an interactive **explorer** to browse any test image under any teacher.

    The maps come from [pytorch-grad-cam](https://github.com/jacobgil/pytorch-grad-cam) through
    `tbkd_helpers/cam.py`; the reporting helpers are in `tbkd_helpers/pipeline.py`, the figures in
    `tbkd_helpers/viz.py` and the explorer in `tbkd_helpers/widgets.py`.
    """),
    parameters("""
    PROFILE = "quick"          # quick | real | full
    DATA_DIR = None            # None: phantoms (quick) or $TBKD_DATA_DIR (real/full)
    SEED = 0                   # every random choice derives from it
    CAM_METHOD = "gradcam"     # a key of tk.cam.CAM_METHODS for the galleries and the table
    ROAD_IMAGES = 8            # TB test images the ROAD faithfulness is measured on (costly)
    GALLERY_PER_GROUP = 2      # X-rays per row group (TP, FP, FN) in the gallery
    PROGRESS = False           # True: progress bars while teachers train and maps are cached
    """),
    code("""
    import numpy as np
    import pandas as pd

    import tbkd_helpers as tk

    profile = tk.config.get_profile(PROFILE, data_dir=DATA_DIR, seed=SEED)
    tk.config.seed_everything(profile.seed)
    prep = tk.data.prepare(profile, progress=False)
    print(f"profile {profile.name!r}: teachers at {profile.image_size} px "
          f"({profile.inception_size} px for Inception V3); Grad-CAM layer at stride {profile.cam_stride}; "
          f"cached maps at {profile.cam_size}×{profile.cam_size} px")
    print(f"CAM methods available: {', '.join(tk.cam.CAM_METHODS)}")
    """, check=True),
    md(r"""
    ## Grad-CAM in one formula

    A CNN turns the image into stacks of **feature maps**: at a chosen layer, $K$ channels
    $A^1, \dots, A^K$, each a small grid ($u \times v$) that lights up where the channel's pattern
    occurs. The classifier head then turns them into one score per class; $y^c$ is the score
    (logit) of class $c$ — here $c$ = TB.

    Grad-CAM (Selvaraju et al., 2017) asks *how much would the TB score grow if channel $k$ grew*,
    and answers with the gradient, averaged over the grid:

    $$\alpha_k^c \;=\; \frac{1}{u\,v} \sum_{i=1}^{u} \sum_{j=1}^{v} \frac{\partial y^c}{\partial A^k_{ij}}$$

    Each channel's weight $\alpha_k^c$ says how much that channel speaks *for* TB. The map is the
    weighted sum of the channels, keeping only what pushes the score up:

    $$L^c_{\text{Grad-CAM}} \;=\; \mathrm{ReLU}\Big(\sum_{k=1}^{K} \alpha_k^c\, A^k\Big)$$

    The ReLU drops regions that argue *against* TB (they belong to the other class's map). The
    $u \times v$ map is finally resized to the image and scaled to $[0, 1]$ (per image: 0 is the
    least, 1 the most attended place; the scale says nothing about how *sure* the model is).

    Three consequences to keep in mind when reading the pictures:

    - **The map is as coarse as the layer.** At stride 32 (the classic choice, the last
      convolutional layer) a 64 px input gives a 2×2 grid — four blobs, whatever the image. The kit
      therefore reads an earlier block (`profile.cam_stride`): the last block at **stride 16** in
      the `real` profile (7×7 at 112 px), and at **stride 8** in `quick`, whose 64-px phantoms
      would otherwise get a 4×4 grid, coarser than most lesions. At the paper's 224 px the classic
      stride-32 layer already gives 7×7. The table below names each teacher's layers. (Inception V3
      shrinks its input more aggressively: at the kit's 80 px its stride-32 map is a single cell —
      a constant map that points nowhere.)
    - **It explains one class.** The TB map of a normal X-ray is legitimate: it shows what would
      have argued for TB. The explorer at the end lets you switch to the normal class.
    - **It explains the model, not the disease.** A teacher that learned a shortcut gets a map of
      the shortcut. That is why the second half of this chapter *measures* the maps.

    **Other methods** (all in pytorch-grad-cam, selectable with `CAM_METHOD` or in the explorer):
    *Grad-CAM++* weights the gradients by higher-order terms (better for several lesions);
    *XGradCAM* and *LayerCAM* weight each position rather than each channel; *HiResCAM* multiplies
    gradients and activations element-wise before summing (provably faithful to the last layer);
    *EigenCAM* needs no gradient at all (the first principal component of the activations, so it
    ignores the class); *Score-CAM* masks the image with each channel and watches the score — one
    forward pass per channel, far too slow for a whole data set here, so only the explorer offers it.
    """),
    md("""
    ## The teachers and their Grad-CAM layers

    The teachers come from chapter 02's artifacts (a missing one is trained now, which takes a
    while). For each, the layers at stride 8, 16 and the classic stride 32, with the size of their
    maps at the kit's input size (this profile reads the one at stride `profile.cam_stride`):
    """),
    code("""
    teachers = {arch: tk.pipeline.train_teacher(profile, arch, prep, progress=PROGRESS)[0]
                for arch in profile.teachers}
    print(pd.DataFrame(tk.pipeline.cam_layers(profile, teachers)).set_index("teacher").to_string())
    """, check=True),
    md("""
    (VGG16's "stride 32" layer is the ReLU after its last convolution, *before* the last max-pool,
    so two columns name the same layer: it is already at stride 16.)

    ## The cache the distillation reads

    Chapter 04 trains the student with a loss that pulls its Grad-CAM towards a teacher's. Running
    five teachers on every batch of every epoch would cost far more than training the student, so
    the teachers' maps of the **training images** are computed once, here, in batches, and stored
    on disk with the teachers' logits (for logit distillation):

    - one compressed `.npz` file per teacher, `cams/<teacher>_train.npz` in the artifacts folder;
    - `cams`: one TB-class map per image, shrunk to `profile.cam_size` px and stored as float16
      (maps are in [0, 1]; three decimals are plenty), `logits`: the two class scores, `labels`,
      `ids` (which image each row is);
    - `key`: what the maps depend on — the SHA-256 of the teacher's checkpoint, the image size, the
      layer's stride, the method, the map size and a fingerprint of the images. The cache is
      **recomputed only when the key changes** (a retrained teacher, other images, other settings);
      otherwise it is read back.
    """),
    code("""
    caches = {arch: tk.pipeline.cam_cache(profile, arch, prep, "train", model=teachers[arch], progress=PROGRESS)
              for arch in profile.teachers}
    rows = [{"teacher": arch, "images": len(c), "maps": "×".join(map(str, c.cams.shape[1:])),
             "dtype": str(c.cams.dtype), "logits": c.logits.shape[1], "file": c.path.name}
            for arch, c in caches.items()]
    print(pd.DataFrame(rows).set_index("teacher").to_string())
    """, check=True),
    code("""
    import time

    sizes = {arch: c.path.stat().st_size for arch, c in caches.items()}
    print("size on disk: " + ", ".join(f"{a} {s / 1024:.0f} KB" for a, s in sizes.items())
          + f"; {sum(sizes.values()) / 1024:.0f} KB in all")
    t0 = time.perf_counter()
    again = tk.pipeline.cam_cache(profile, profile.teachers[0], prep, "train", model=teachers[profile.teachers[0]],
                                  progress=False)
    print(f"asked again: read back in {time.perf_counter() - t0:.2f} s "
          f"(checkpoint {again.key['checkpoint_sha256'][:12]}…, method {again.key['method']!r})")
    """),
    md("""
    ## Maps on the test split

    Everything from here on is **evaluation**: the maps of the held-out test images, each teacher
    at its own input size, with the decision threshold each teacher got on the *validation* split
    in chapter 02. Nothing below is tuned on these images.
    """),
    code("""
    att = tk.pipeline.teacher_attention(profile, prep, part="test", method=CAM_METHOD, loaded=teachers)
    n_tb = int((att.labels == 1).sum())
    n_lesion = int(att.lesions[profile.image_size].reshape(len(att.labels), -1).any(1).sum())
    print(f"{len(att.labels)} test images ({n_tb} TB, {len(att.labels) - n_tb} normal); "
          f"{n_lesion} with a known lesion mask; maps of the TB class by {att.method}")
    """, check=True),
    md("""
    ## The same X-rays under all five teachers

    Each row is one test X-ray: first on its own, with the U-Net's lung outline (cyan) and, on
    phantoms, the true lesions (red); then its TB map under each teacher, with that teacher's P(TB)
    above it (in red when that teacher's decision was wrong). Rows are grouped by what the
    *majority* of the teachers decided:

    - **TP** (true positives): TB, and most teachers say TB — do the maps sit on the lesions?
    - **FP** (false positives): normal, but most teachers say TB — what did they take for disease?
    - **FN** (false negatives): TB, but most teachers say normal — was the lesion overlooked?

    Within a group the most confident cases come first. Look for maps that agree with each other
    and with the red outlines, and for maps that hug the edge of the lungs or the black background
    (a shortcut: the lung-extracted images are black outside the lungs). A panel with no colour at
    all is an *empty* map: nothing in that image pushes the teacher's TB score up at this layer
    (the table below counts them).
    """),
    code("""
    picks = tk.reports.gallery_picks(att, per_group=GALLERY_PER_GROUP)
    for group, idx in picks.items():
        print(f"{group}: {len(idx)} shown" if idx else
              f"{group}: none on this test split ({tk.reports.GALLERY_GROUPS[group]})")
    fig = tk.viz.cam_gallery(tk.reports.gallery_rows(att, picks), att.teachers, method=att.method)
    tk.viz.save_figure(fig, profile, "03_gallery");
    """),
    md("""
    ### One X-ray, several methods

    The same X-ray (the first true positive above, or the first TB test image) under the methods
    of pytorch-grad-cam, for the teacher with the best validation AUC (chapter 02 prints the AUCs;
    a tie goes to the first in alphabetical order, as in chapter 04). Where the methods agree, the
    picture is robust; where they differ, remember that each answers a slightly different question.
    """),
    code("""
    aucs = tk.pipeline.teacher_val_auc(profile, prep)
    best = tk.distill.best_teacher(aucs)
    shown = (picks["TP"] or np.flatnonzero(att.labels == 1).tolist())[0]
    methods = [m for m in tk.cam.CAM_METHODS if m != "scorecam"]
    s = att.sizes[best]
    layer = tk.models.target_layer(teachers[best], best, stride=profile.cam_stride)
    x = att.images[s][shown:shown + 1]
    maps = {m: tk.cam.compute_cams(teachers[best], layer, x, target_class=1, method=m)[0] for m in methods}
    fig = tk.viz.cam_methods(x[0, 0].numpy(), maps, lungs=att.lungs[s][shown], lesions=att.lesions[s][shown],
                             title=f"{att.records[shown].key} under {best} (best validation AUC, {aucs[best]:.2f})")
    tk.viz.save_figure(fig, profile, "03_methods");
    """),
    md(r"""
    ## Measured, not only drawn

    A gallery shows a handful of images that someone picked. Four numbers per teacher summarise
    *all* the test maps:

    - **in-lung share** — the share of a map's mass (the sum of its values) that lies inside the
      U-Net's lung mask, averaged over the images. A map spread evenly over the image would score
      the lungs' share of the image: that is the **chance** row. Well above chance: the teacher
      looks at the lungs; at or below: it looks at the background or the border.
    - **pointing game** — on TB phantoms, whose lesions are known, does the map's single highest
      pixel fall on a lesion? The hit rate over the TB images with a lesion mask. The chance row is
      the lesions' share of the image (where a randomly placed peak would land). Real X-rays come
      without lesion masks, so there it is empty.
    - **ROAD** (*Remove And Debias*, Rong et al. 2022) — is the map **faithful**, i.e. does the
      model's confidence really depend on the pixels the map points at? ROAD removes the most
      relevant pixels (by the map) — 20 %, 50 % and 80 % of them — and imputes them from their neighbours
      (so that the removal itself leaves no artificial edge the model could react to), and does the
      same for the *least* relevant pixels. The score (pytorch-grad-cam's `ROADCombined`) is half
      the difference of the drops in TB probability,
      $\tfrac12(\text{drop}_\text{most relevant removed} - \text{drop}_\text{least relevant removed})$,
      averaged over the percentiles, in $[-1, 1]$: **positive** when removing what the
      map highlights hurts the TB probability more than removing what it ignores; near zero when
      the map and the model's confidence have little to do with each other. ROAD solves a sparse linear system per
      image and percentile, so it runs on the first `ROAD_IMAGES` TB test images only.
    - **agreement** — the Pearson correlation between two teachers' maps of the same image,
      averaged over the test images; the table gives each teacher's mean with the four others, the
      matrix below every pair. Teachers that found the same evidence agree; a teacher that agrees
      with nobody has found something else (or nothing).

    The `n` columns say how many images each number rests on: with a few dozen images, a difference
    in the second decimal is noise. `n empty maps` counts maps with no positive value at all:
    nothing in the image pushes that teacher's TB score up. A teacher whose output hardly depends
    on its input (one that collapsed to the same answer for every image) has near-zero gradients
    and only empty maps; its shares are then undefined (NaN), and its pointing game counts misses.
    """),
    code("""
    rows = tk.pipeline.attention_table(att, road_images=ROAD_IMAGES, seed=profile.seed)
    table = pd.DataFrame(rows).set_index("teacher").rename(columns=tk.pipeline.ATTENTION_COLUMNS)
    table.round(3)
    """),
    code("""
    for line in tk.reports.attention_summary(rows):
        print(line)
    """),
    code("""
    m = tk.pipeline.attention_agreement(att)
    fig = tk.viz.agreement_matrix(m, att.teachers, title=f"agreement of the teachers' {att.method} maps "
                                  f"({len(att.labels)} test images)")
    tk.viz.save_figure(fig, profile, "03_agreement");
    """),
    md("""
    The pointing game of the teacher that chapter 04 will let guide the student (the best on
    validation), with its 95 % interval over the test images, against the chance row:
    """),
    code("""
    best = tk.distill.best_teacher(aucs)
    hits = tk.cam.pointing_game(att.maps[best], att.lesions[att.sizes[best]])
    chance = next(r for r in rows if r["teacher"] == "chance")["pointing"]
    if np.isfinite(hits).any():
        mean, lo, hi = tk.pipeline.mean_ci(hits, n_boot=1000, seed=profile.seed)
        verdict = "its interval lies clear of chance" if lo > chance else "its interval reaches down to chance"
        print(f"{best}: pointing game {mean:.2f} [{lo:.2f}, {hi:.2f}] on {int(np.isfinite(hits).sum())} TB images "
              f"against chance {chance:.3f}: {verdict}")
    else:
        print(f"{best}: no lesion masks on this data set: the pointing game is undefined")
    """),
    md("""
    **Reading the table on the `quick` profile.** Compare every row with the chance row first. On
    the phantoms the lesions are the only difference between the classes, so a teacher that learned
    the task *should* look at them: the line above says whether the guide's map peaks on a lesion
    more often than a random pixel would. The other teachers differ — chapter 02 showed whether each
    one's AUC interval clears chance, and the table gives each teacher's figures beside the chance
    row (only the guide's pointing game gets an interval and a verdict here); a teacher can rank the images well from evidence spread over
    the lungs that no single peak captures. A teacher whose in-lung share and pointing game sit at
    chance, with a ROAD score near zero, is not looking at anything in particular — and its maps
    would teach a student nothing. Read the guide's ROAD too: a pointing game above chance with a
    ROAD near zero means its peaks find lesions, but its confidence does not demonstrably rest on
    them. On the
    `real` profile the same table says whether the teachers look into the lungs at all (after
    lung extraction, everything outside them is black: a map on the border or the background
    points at a shortcut, such as the shape of the mask) and which teacher's maps are worth
    distilling. Chapter 04 chooses the guiding teacher by validation AUC (never by this test-split
    table) and also tries a fusion of all five.

    ## The CAM explorer

    Pick an image (filter by data set, label, and whether model A got it right), one or two models
    side by side, the CAM method, the class whose map is shown (TB, normal, or each model's own
    decision), the opacity of the heat map, and the lung and lesion outlines. Above the picture:
    each model's P(TB), its threshold and whether its decision was right. The maps are computed on
    demand, one image at a time and then kept (Score-CAM runs the model once per channel of the
    layer — hundreds of passes — and takes tens of seconds per model on a CPU).

    The explorer reuses the test images, masks and teachers above. It works from any notebook:
    `tk.widgets.explorer_for_profile(profile)` builds the same one from the artifacts, and
    `explorer.add_model("student", model, arch, size=...)` adds another model (chapter 04 adds the
    distilled student). It needs a live kernel: in a saved copy of this notebook the controls do
    not respond.
    """),
    code("""
    explorer = tk.widgets.explorer_for_profile(profile, prep, attention=att)
    explorer
    """),
    md("""
    The explorer can also be driven from code, which is how its tests work. Here: the gallery's
    first true positive (or the first TB test image) under the two teachers with the best
    validation AUC, lungs and lesions outlined.
    Below is the static picture of what the explorer now shows (it is also what a saved copy of
    this notebook displays).
    """),
    code("""
    first_two = sorted(aucs, key=aucs.get, reverse=True)[:2]
    explorer.set(label="TB", image=att.records[shown].key, a=first_two[0], b=first_two[1],
                 show_lungs=True, show_lesions=profile.data == "phantom")
    assert len(explorer.view.panels) == 2 and explorer.view.label == 1
    assert all(p.cam.shape == p.image.shape for p in explorer.view.panels)
    explorer.figure
    """),
    md("""
    ## What's next

    Chapter 04 distils the teachers into a MobileNet V3 Small student. Its training reads the
    caches written above (the guiding teacher's maps of the training images) and pulls the
    student's own Grad-CAM towards them; chapter 05 then asks whether the student's maps pass the
    same measurements as the teachers'.
    """),
]

build("03_gradcam", cells)
