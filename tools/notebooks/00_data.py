"""Builder of notebooks/00_data.ipynb: the data tour."""
from nbbuild import build, code, md, parameters

cells = [
    md("""
    # 00 · The data: chest X-rays, their labels and their lungs

    This kit reproduces Ding et al., *A Grad-CAM-based knowledge distillation method for the
    detection of tuberculosis* (ICIM 2023). The paper's pipeline has four steps, one chapter each:

    1. a **U-Net** cuts the lungs out of each chest X-ray (chapter 01),
    2. five **teacher CNNs** learn to detect tuberculosis (TB) (chapter 02),
    3. their **Grad-CAM** attention maps show where they look (chapter 03),
    4. those maps guide the **distillation** of a small, interpretable student (chapter 04),

    and chapter 05 sets the results beside the paper's (91.2 % accuracy on Shenzhen, 85.7 % on
    Montgomery). This chapter meets the data every later one stands on.

    **Two data sources, one loader.** The paper uses two public sets of the US National Library
    of Medicine: the *Shenzhen* set (662 X-rays, 336 with TB) and the *Montgomery County* set
    (138 X-rays, 58 with TB, with hand-drawn lung masks). The kit reads them in their official
    folder layout. Because they are a download away, the kit also carries its own **phantoms**:
    synthetic chest X-rays with known lungs and known lesions, written in exactly the same
    layout, so that everything below also runs offline in a few minutes. Which one you get is set
    by one word, the **profile**:

    | profile | data | sizes | meant for |
    |---|---|---|---|
    | `quick` | built-in phantoms | tiny images, few epochs | a laptop CPU, minutes, offline |
    | `real` | NLM Shenzhen + Montgomery (`TBKD_DATA_DIR`) | reduced | a laptop CPU, under two hours |
    | `full` | NLM sets | the paper's (224 px, 299 px for Inception V3) | a GPU |
    """),
    parameters("""
    PROFILE = "quick"       # quick | real | full
    DATA_DIR = None         # None: phantoms (quick) or $TBKD_DATA_DIR (real/full)
    SEED = 0                # every random choice in the kit derives from it
    REAL_DATA_DIR = None    # optional: a folder of NLM data to compare the phantoms with
    """),
    code("""
    import tbkd_helpers as tk

    profile = tk.config.get_profile(PROFILE, data_dir=DATA_DIR, seed=SEED)
    tk.config.seed_everything(profile.seed)
    print(f"profile {profile.name!r}: data from {profile.data} source")
    """),
    md("""
    ## Finding the images

    `tk.data.prepare` does three things: in the `quick` profile it generates the phantoms the
    first time (they are deterministic for a seed); it reads the folder in whatever official
    layout it finds; and it loads the saved train/validation/test split, or makes and saves it the
    first time. Every image becomes one *record*: its path, its data set, its label (the last digit
    of the file name: `_0` normal, `_1` TB), a patient id, and the paths of its lung masks where
    there are any.
    """),
    code("""
    prep = tk.data.prepare(profile)
    record = next(r for r in prep.records if r.label == 1)
    for field in ("key", "dataset", "label", "patient_id", "path", "left_mask", "right_mask", "mask"):
        value = getattr(record, field)
        print(f"{field:>10}: {value.relative_to(prep.root) if hasattr(value, 'relative_to') else value}")
    """),
    code("""
    import pandas as pd

    counts = pd.DataFrame(tk.data.count_table(prep.records)).set_index("dataset")
    print(counts.to_string())
    """, check=True),
    md("""
    Shenzhen-style images come with at most a combined lung mask; Montgomery-style images with
    two hand-drawn masks, one per lung. Chapter 01 trains the U-Net on the images that have masks
    and predicts masks for the others.

    ## What the images look like

    Each row below is one data set and class. Look for the anatomy a radiologist reads: the dark,
    air-filled lung fields; the bright spine, heart and mediastinum between them; the ribs across
    the lungs; the diaphragm domes at the bottom. TB shows as brighter patches or nodules, mostly
    in the upper lung zones, sometimes with a ring-shaped cavity.
    """),
    code("""
    fig = tk.viz.example_grid(prep.records, per_class=4, seed=profile.seed)
    tk.viz.save_figure(fig, profile, "00_examples");
    """),
    md("""
    ## Lung masks

    The masks say which pixels are lung. The *patient's* left lung appears on the *image's* right
    side (we look at the patient from the front). On phantoms, the lesions are known too (red):
    the kit uses them later to check whether a network's attention falls on the disease, which no
    real data set here can tell.
    """),
    code("""
    with_masks = [r for r in prep.records if r.has_lung_mask]
    pick = [r for r in with_masks if r.label == 1][:2] + [r for r in with_masks if r.label == 0][:2]
    fig = tk.viz.mask_overlays(pick)
    tk.viz.save_figure(fig, profile, "00_masks");
    """),
    md("""
    ## Intensities

    Every image is read as one channel of floating-point values in [0, 1], whatever its file
    format (8-bit, 12-bit in a 16-bit PNG like Montgomery's, RGB, JPEG). The histograms show how
    the sets differ in brightness and contrast: a detector trained on one set meets another
    distribution on the other, which chapter 05 measures (train on one, test on the other).
    """),
    code("""
    img = tk.data.read_image(prep.records[0].path)
    print(f"one image: shape {img.shape}, dtype {img.dtype}, range [{img.min():.2f}, {img.max():.2f}]")
    """, check=True),
    code("""
    fig = tk.viz.intensity_histograms(prep.records)
    tk.viz.save_figure(fig, profile, "00_histograms");
    """),
    md("""
    ## An honest split

    The split is **stratified** (every data set and class is cut in the same 70/10/20 proportions),
    **seeded** (the same seed gives the same split), and **saved** to `splits.json` in the profile's
    artifacts folder with the SHA-256 of every file. Every later chapter loads this file; loading
    checks that the images are still the same files, so a changed data folder cannot silently
    shuffle test images into training. The test split is touched once, in the final evaluation.
    """),
    code("""
    table = pd.DataFrame(prep.split.table(prep.records))
    print(table.pivot_table(index="split", columns="dataset", values=["normal", "tb"], aggfunc="sum")
          .reindex(["train", "val", "test"]).to_string())
    """, check=True),
    code("""
    train, val, test = (set(prep.split[n]) for n in ("train", "val", "test"))
    assert not (train & val or train & test or val & test), "splits overlap"
    assert len(train | val | test) == len(prep.records), "an image is in no split"
    again = tk.data.make_split(prep.records, seed=profile.seed, fractions=profile.split_fractions)
    assert again.test == prep.split.test, "the same seed must give the same split"
    print(f"split saved in {prep.split_path.name}: disjoint, complete, reproducible")
    """, check=True),
    md("""
    ## From files to tensors

    The networks read `CXRDataset`: each image resized once to the classifier's input size, as a
    (1, H, W) tensor in [0, 1]. Training copies get light augmentation (a few degrees of rotation, a
    small shift and zoom, brightness and contrast), which keeps the label true while showing the
    network more variety.
    """),
    code("""
    ds = tk.data.CXRDataset(prep.part("train")[:8], size=profile.image_size, augment=True)
    x, y = ds[0]
    print(f"{len(ds)} training images as tensors of shape {tuple(x.shape)}, label {y}")
    """, check=True),
    md("""
    ## Phantoms beside real X-rays

    When a folder of NLM data is given (`REAL_DATA_DIR`, or the `real` profile), phantoms and real
    images are shown side by side: the phantoms borrow the real anatomy's layout and contrast, not
    its detail. (The committed quick-profile notebook shows no real images: the data sets' owners
    ask that they not be redistributed.)
    """),
    code("""
    real_dir = REAL_DATA_DIR or (profile.data_dir if profile.data == "real" else None)
    if real_dir:
        phantom_dir = tk.config.get_profile("quick").data_dir
        phantoms = tk.data.prepare(tk.config.get_profile("quick"), progress=False).records
        real = tk.data.discover(real_dir)
        pick = lambda recs: [r for r in recs if r.label == 1][:2] + [r for r in recs if r.label == 0][:1]
        fig = tk.viz.side_by_side(pick(phantoms), pick(real), titles=("phantom", "real"))
        tk.viz.save_figure(fig, profile, "00_phantom_vs_real")
    else:
        print("no real data given: set REAL_DATA_DIR to compare")
    """),
    md("""
    ## What's next

    Chapter 01 trains a U-Net on the lung masks and cuts every image down to its lungs.
    """),
]

build("00_data", cells)
