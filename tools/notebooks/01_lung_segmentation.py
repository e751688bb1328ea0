"""Builder of notebooks/01_lung_segmentation.ipynb: the U-Net that finds the lungs."""
from nbbuild import build, code, md, parameters

cells = [
    md("""
    # 01 · Lung segmentation: a U-Net finds the lungs

    The paper's first step cuts every chest X-ray down to its lungs, "so that nothing outside the
    lungs influences detection". A classifier shown the whole film can learn shortcuts: the
    hospital's text markers, the patient's position, the shape of the shoulders, the exposure at the
    edge of the film. Black out everything but the lungs and those cues are gone; what is left is
    where tuberculosis actually shows.

    This chapter

    1. trains a **U-Net** to say, for every pixel, whether it is lung,
    2. measures it with **Dice** and **IoU** on held-out test images,
    3. cleans its predictions (**post-processing**) and flags the ones that do not look like two
       lungs (**plausibility**),
    4. **extracts** the lung region of every image of every data set for the classifiers of
       chapter 02, and caches it.

    All the code lives in `tbkd_helpers/segmentation.py` (figures in `tbkd_helpers/viz.py`); the
    cells below only call it.
    """),
    parameters("""
    PROFILE = "quick"       # quick | real | full
    DATA_DIR = None         # None: phantoms (quick) or $TBKD_DATA_DIR (real/full)
    SEED = 0                # every random choice derives from it
    SEG_EPOCHS = None       # None: the profile's number of U-Net epochs
    GALLERY_N = 4           # how many best / worst test images to show
    """),
    code("""
    import numpy as np
    import pandas as pd

    import tbkd_helpers as tk

    overrides = {"seg_epochs": SEG_EPOCHS} if SEG_EPOCHS else {}
    profile = tk.config.get_profile(PROFILE, data_dir=DATA_DIR, seed=SEED, **overrides)
    tk.config.seed_everything(profile.seed)
    seg = tk.segmentation
    print(f"profile {profile.name!r}: U-Net with a {profile.seg_encoder} encoder at {profile.seg_size} px, "
          f"{profile.seg_epochs} epochs, batch {profile.seg_batch_size}, "
          f"ImageNet encoder weights {'on' if profile.seg_pretrained else 'off'}")
    print(f"extracted images: {seg.extract_size(profile)} px, margin {profile.seg_margin:.0%} of the image")
    """, check=True),
    md("""
    ## Which images teach the U-Net

    A U-Net learns from examples of images *with* their lung masks. Only some images have them: the
    Montgomery set comes with hand-drawn masks of each lung; the public Shenzhen masks exist as a
    separate download (the kit uses them when a `mask/` folder is there); the phantoms of the
    `quick` profile carry exact masks for both sets.

    We keep the split that chapter 00 saved: the U-Net trains only on the masked images of the
    **train** part, picks its best epoch on the **val** part, and is measured on the **test** part.
    That way it never sees a test image of the TB classifiers either — the lung extraction cannot
    have memorised the images the final accuracy is measured on.
    """),
    code("""
    prep = tk.data.prepare(profile, progress=False)
    parts = {name: seg.masked_part(prep, name) for name in ("train", "val", "test")}
    rows = [{"split": name, "dataset": ds, "with lung masks": sum(r.dataset == ds for r in recs),
             "all images": len(prep.part(name, ds))}
            for name, recs in parts.items() for ds in sorted({r.dataset for r in prep.records})]
    print(pd.DataFrame(rows).to_string(index=False))
    """, check=True),
    md("""
    ## What a U-Net is

    A U-Net (Ronneberger et al., 2015) is an image-to-image network drawn as the letter U:

    - The **encoder** (left arm) is an ordinary classification CNN — here a ResNet-18, as
      `seg_encoder` says. Each stage halves the resolution and adds channels: the deeper it goes, the
      more it knows *what* is in the image (rib, heart, lung field) and the less exactly *where*.
    - The **decoder** (right arm) climbs back up, doubling the resolution at each step, until there
      is one output per input pixel: the *logit* that the pixel is lung (a sigmoid turns it into a
      probability).
    - The **skip connections** (green) are what make it a U-Net: each decoder step also receives the
      encoder's feature map of the same resolution, so the fine detail lost on the way down — the
      exact line of the lung border — is available again on the way up.

    The kit builds it with `segmentation_models_pytorch.Unet` with **one input channel** (X-rays are
    grey). Each image is standardised to zero mean and unit variance inside the model, so a darker or
    brighter film makes no difference. ImageNet weights for the encoder are a setting
    (`profile.seg_pretrained`), off in every profile: they have to be downloaded, and a U-Net from
    random weights can already find the lungs well. Published U-Nets reach a Dice of about 0.97 on
    the real Montgomery masks; the Dice this run reaches is printed below.
    """),
    code("""
    model = seg.build_unet(profile.seg_encoder, pretrained=False, decoder_channels=profile.seg_decoder_channels)
    fig = tk.viz.unet_diagram(profile.seg_size, model.unet.encoder.out_channels, profile.seg_decoder_channels,
                              profile.seg_encoder)
    tk.viz.save_figure(fig, profile, "01_unet");
    """),
    code("""
    import torch

    n_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        out = model(torch.rand(2, 1, profile.seg_size, profile.seg_size))
    print(f"{n_params / 1e6:.1f} M parameters; input (2, 1, {profile.seg_size}, {profile.seg_size}) "
          f"-> output {tuple(out.shape)}: one logit per pixel")
    """, check=True),
    md("""
    ## Training

    **Loss.** Each pixel is a yes/no question, so binary cross-entropy (BCE) is the natural loss.
    But lungs cover only about a quarter of the image, and BCE treats every pixel alike: a network
    can score well while being sloppy at the border, which is exactly what matters. The **Dice
    loss** (one minus the Dice overlap, defined below, computed on probabilities) looks at the lung
    as a whole shape. The kit adds the two: BCE for stable pixel-wise gradients, Dice for the shape.

    **Augmentation.** Every training image is shown a little differently each epoch: rotated a few
    degrees, shifted, zoomed, brighter or darker, with more or less contrast and gamma. The
    geometric changes must move the **image and its mask together**, or the network would learn
    from wrong answers. Below: one training image and four augmented versions, each with its
    augmented mask outlined — the outline still sits on the lungs.
    """),
    code("""
    fig = tk.viz.segmentation_overlays(seg.augmentation_cases(parts["train"][0], profile.seg_size, n=4,
                                                              seed=profile.seed),
                                       ncols=5, cell=1.8, legend="orange: the mask, augmented with the image")
    tk.viz.save_figure(fig, profile, "01_augmentation");
    """),
    md("""
    `train_unet` runs AdamW with a short warm-up and a cosine decay of the learning rate, and after
    every epoch measures the Dice on the validation images. The weights kept are those of the
    **best validation epoch**, saved as `segmentation/unet.pt` (a dict with the architecture, the
    settings and the weights, loadable with `torch.load(..., weights_only=True)`). Run the cell
    again and it loads the finished checkpoint instead of training; stop it half-way and the next
    run resumes from the last saved epoch.
    """),
    code("""
    model, history = seg.train_unet(profile, prep)
    kept = seg.best_epoch(history)
    print(f"kept epoch {kept} of {len(history)}")
    """),
    code("""
    fig = tk.viz.seg_training_curve(history)
    tk.viz.save_figure(fig, profile, "01_training_curve");
    """),
    md("""
    Both losses should fall and level off, and the validation Dice climb towards 1. A validation
    loss far above the training loss in the first epochs is normal here: BatchNorm's running
    statistics, used at evaluation time, still lag behind the quickly changing weights.

    ## Measuring a mask: Dice and IoU

    Let *P* be the predicted lung pixels and *T* the true (manual) ones.

    - **Dice** = 2 |P ∩ T| / (|P| + |T|): the overlap, counted against the average size of the two.
    - **IoU** (intersection over union, Jaccard) = |P ∩ T| / |P ∪ T|.

    Both are 1 for a perfect mask and 0 for no overlap, and they rank masks the same way
    (Dice = 2 IoU / (1 + IoU)); IoU is the stricter number. A border one pixel off on a small lung
    costs more than on a large one, which is why both are computed **per image** and then averaged.
    Predictions are scaled back to the mask's own resolution and post-processed before they are
    compared, so the figures describe the masks that are actually used.
    """),
    code("""
    table = seg.evaluate(model, parts["test"], profile)
    print(seg.summarize(table).to_string())
    """),
    code("""
    target = 0.90 if profile.name == "quick" else 0.95  # the kit's targets; published U-Nets: 0.96-0.98
    print(f"{len(table)} test images; mean Dice >= {target}: {table.dice.mean() >= target}")
    """, check=True),
    code("""
    fig = tk.viz.dice_distribution(table)
    tk.viz.save_figure(fig, profile, "01_dice_per_image");
    """),
    md("""
    Every dot is one test image, at the same height in both panels; IoU sits below Dice for the
    same mask (Dice = 2 IoU / (1 + IoU)). The mean hides the tail: the gallery below shows the best and the
    worst cases, with the U-Net's outline (orange, dashed) over the manual one (cyan). Look at
    *where* the worst masks go wrong — usually at the bottom of the lungs, behind the heart and the
    diaphragm, where even annotators disagree.
    """),
    code("""
    best, worst = seg.best_and_worst(table, n=GALLERY_N)
    by_key = {r.key: r for r in parts["test"]}
    fig = tk.viz.segmentation_overlays(seg.overlay_cases(model, [by_key[k] for k in best], profile, table),
                                       title="best test images")
    tk.viz.save_figure(fig, profile, "01_best");
    fig = tk.viz.segmentation_overlays(seg.overlay_cases(model, [by_key[k] for k in worst], profile, table),
                                       title="worst test images")
    tk.viz.save_figure(fig, profile, "01_worst");
    """),
    code("""
    print(table.sort_values("dice")[["file", "dataset", "dice", "iou", "dice_raw", "plausible"]]
          .head(GALLERY_N).round(3).to_string(index=False))
    """),
    md("""
    ## Post-processing

    The network judges each pixel on its own, so its raw output can contain things no lung has: a
    few stray pixels of "lung" in the stomach's air bubble or outside the body, a hole where a
    dense nodule or the hilum made it hesitate. Three simple steps clean it:

    1. **threshold** the probability (`seg_threshold`, 0.5),
    2. keep the **two largest connected regions** — two lungs, nothing else,
    3. **fill holes** inside them: a lesion inside the lung is still lung, and the classifier must
       see it.

    Below, the test image whose raw prediction had the most separate regions (the table's
    `regions_raw`; `dice_raw` is its Dice before post-processing). Colours mark the regions. A
    well-trained U-Net on clean images often needs no cleaning at all — then both panels agree;
    the steps earn their keep on unusual images, as on the Shenzhen films of the `real` profile.
    """),
    code("""
    changed = (table.assign(gain=(table.dice - table.dice_raw).abs())
               .sort_values(["regions_raw", "gain", "key"]).iloc[-1])
    fig = tk.viz.postprocess_steps(seg.postprocess_example(model, by_key[changed.key], profile))
    tk.viz.save_figure(fig, profile, "01_postprocess")
    print(f"{changed.file}: Dice {changed.dice_raw:.3f} before, {changed.dice:.3f} after post-processing")
    """),
    md("""
    ## Is it a pair of lungs? The plausibility check

    A mask can be clean and still wrong: a network trained on one hospital's films may meet an
    image it has never seen the like of (a child, a rotated film, a collapsed lung, a photo of a
    screen). Cutting such an image down to a wrong "lung" region would throw away exactly what the
    classifier needs, silently. So every predicted mask is judged:

    - the lungs must cover a plausible share of the image (`seg_area_bounds`, 8–60 %),
    - there must be **two** regions, the smaller at least a quarter of the larger
      (`seg_min_lung_ratio`), lying side by side.

    A mask that fails is **reported by file with the reason**, and its image is passed on whole
    (resized, not cropped) rather than cut wrongly. Here is what the check says of one good mask
    and of three ways of spoiling it:
    """),
    code("""
    good = seg.predict_masks(model, [tk.data.read_image(by_key[best[0]].path)], profile.seg_size)[0]
    largest = seg.postprocess(good.astype(float), keep=1)
    band = np.zeros_like(good)
    band[good.shape[0] // 2: good.shape[0] // 2 + good.shape[0] // 20] = True
    spoiled = {"as predicted": good, "one lung erased": largest, "a thin band left": good & band,
               "nothing found": np.zeros_like(good)}
    for name, mask in spoiled.items():
        ok, why = seg.plausibility(mask, profile.seg_area_bounds, profile.seg_min_lung_ratio)
        print(f"{name:>20}: {'ok' if ok else 'IMPLAUSIBLE'} — {why}")
    """),
    code("""
    print(f"test images with an implausible mask: {(~table.plausible).sum()} of {len(table)}")
    for row in table[~table.plausible].itertuples():
        print(f"  {row.file}: {row.reason}")
    """, check=True),
    md("""
    ## Cutting out the lungs of every image

    Now the U-Net predicts a mask for **every** image of every data set — including the Shenzhen
    images, which have no manual masks, and including the masked ones, so that the classifiers see
    every image exactly as a new X-ray would come to them. For each image:

    1. the mask is grown by a small **margin** (`seg_margin`, a share of the image's larger side),
       so that the lung border and anything sitting on it stays in view,
    2. everything outside the grown mask turns black,
    3. the image is cropped to the grown mask's **bounding box**, widened to a square around its
       centre so the lungs keep their proportions,
    4. and resized to `extract_size` pixels — the largest input any classifier takes; each
       classifier's data set resizes on load.

    Masks and extracted images are **cached** in `artifacts/<profile>/segmentation/`: each file is
    written whole or not at all, a journal records each finished image so that a stopped run picks
    up where it left off, and `manifest.json` — written last — lists every image with its mask, its
    extracted file, and whether it fell back to the whole image and why. A later chapter (and a
    re-run of this one) trusts the folder only when the manifest is complete and was made with the
    same U-Net and settings.
    """),
    code("""
    result = seg.run_extraction(profile, prep, model)
    print(result.counts().to_string())
    print(f"{result.computed} images processed now, {result.reused} taken from the cache")
    """),
    code("""
    counts = result.counts()
    print(f"{counts['images'].sum()} images: {counts['extracted'].sum()} cut to their lungs, "
          f"{counts['fallback'].sum()} kept whole because their mask was implausible")
    for key, why in result.fallbacks:
        print(f"  {key}: {why}")
    """, check=True),
    md("""
    ### Shenzhen: a second hospital, often without an answer key

    The NLM's Shenzhen download has no manual lung masks. In the `real` profile (unless you added
    the public Shenzhen masks in a `mask/` folder) there is therefore no Dice to compute for
    Shenzhen: the only check is to look, and the U-Net learned from Montgomery's masks alone, so
    these are films from a hospital, scanner and population it has never seen. Look for masks that
    stop short of the lung apex or the costophrenic angles, or that spill into the heart. The
    phantoms of the `quick` profile carry masks for both sets: there the U-Net trained on both, and
    the manual outline is drawn too. The line printed below says which case you are reading.
    """),
    code("""
    shenzhen = prep.part("test", "shenzhen")[: 2 * GALLERY_N]
    trained_on = sum(r.dataset == "shenzhen" for r in parts["train"])  # parts: images with masks
    print(f"the U-Net trained on {trained_on} Shenzhen masks; of the {len(shenzhen)} Shenzhen test "
          f"images below, {sum(r.has_lung_mask for r in shenzhen)} have a manual mask")
    if shenzhen:
        fig = tk.viz.segmentation_overlays(seg.overlay_cases(model, shenzhen, profile), title="Shenzhen test images")
        tk.viz.save_figure(fig, profile, "01_shenzhen");
    """),
    md("""
    ### Before and after

    What the classifiers will see: each X-ray with its predicted mask, and the extracted image beside
    it. Images whose mask was implausible (if any) come first, marked in red: they are kept whole.
    """),
    code("""
    fb = {k for k, _ in result.fallbacks}
    pick = [r for r in prep.records if r.key in fb][:2]
    pick += [r for ds in sorted({r.dataset for r in prep.records}) for r in prep.part("test", ds)[:3]][:6 - len(pick)]
    fig = tk.viz.extraction_pairs(seg.before_after(result, pick, n=6), ncols=3)
    tk.viz.save_figure(fig, profile, "01_extraction");
    """),
    md("""
    ## Handing over to chapter 02

    The teachers read the extracted images through `extracted_records`: the same records (keys,
    labels, split), each pointing at its lung-extracted image. Running the extraction again costs
    nothing: the manifest says it is complete.
    """),
    code("""
    again = seg.run_extraction(profile, prep, progress=False)
    lungs = seg.extracted_records(prep, again)
    print(f"second run: {again.computed} images processed, {again.reused} from the cache")
    print(f"{len(lungs)} records for chapter 02, e.g. {lungs[0].path.relative_to(again.folder)}")
    """, check=True),
    code("""
    assert table.dice.mean() >= target, f"mean test Dice {table.dice.mean():.3f} below {target}"
    assert len(lungs) == len(prep.records) and all(r.path.is_file() for r in lungs)
    assert again.computed == 0, "a complete extraction was redone"
    print(f"mean test Dice >= {target}; every image has its lungs extracted")
    """, check=True),
    md("""
    ## What's next

    Chapter 02 trains the five teacher CNNs of the paper on these lung-extracted images.

    *Things to try:* set `SEG_EPOCHS = 2` and watch the worst cases get worse; lower
    `seg_margin` to 0 and see the lung borders clipped in the extracted images; switch the encoder
    (`tk.config.get_profile(PROFILE, seg_encoder="mobilenet_v2")`) and compare Dice and speed.
    """),
]

build("01_lung_segmentation", cells)
