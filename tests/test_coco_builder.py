"""`coco_folder`: COCO-format instance annotations (polygons, RLE, iscrowd, categories) as a
TFDS dataset with instance and class masks, on constructed annotations with hand-checked masks
and on scikit-image photographs with drawn polygons; its errors; its readers."""

import json

import numpy as np
import pytest
import skimage.data
import skimage.draw
import tensorflow_datasets as tfds
from PIL import Image
from scipy import ndimage

from common.data import folder_builders
from common.data.folder_builders import CocoAnnotationError, CocoFolder, CocoFolderConfig
from common.eval import dense_data

mask_utils = pytest.importorskip("pycocotools.mask")

CATEGORIES = [  # listed out of id order: classes follow the ids (cat 1, dog 2, bird 3)
    {"id": 9, "name": "bird"},
    {"id": 3, "name": "cat"},
    {"id": 7, "name": "dog"},
]


def _crowd_rle():
    crowd = np.zeros((6, 8), np.uint8, order="F")
    crowd[4:6, 0:4] = 1
    rle = mask_utils.encode(crowd)
    return {"size": rle["size"], "counts": rle["counts"].decode()}  # compressed, as JSON has it


def _constructed(tmp_path):
    """Two 8 x 6 images; the first with 5 annotations (file order):
    1 dog: polygon, the unit square at pixel (1, 2);   2 cat: polygon, rows 1-2, cols 1-3;
    3 dog: uncompressed RLE, column 6, rows 2-4 (column-major counts 38 off, 3 on, 7 off);
    4 cat crowd: compressed RLE, rows 4-5, cols 0-3;   5 bird: polygon, rows 4-5, cols 2-3."""
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).save(images / name)
    annotations = [
        {"id": 11, "image_id": 1, "category_id": 7, "iscrowd": 0,
         "segmentation": [[2, 1, 3, 1, 3, 2, 2, 2]]},
        {"id": 12, "image_id": 1, "category_id": 3, "iscrowd": 0,
         "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]]},
        {"id": 13, "image_id": 1, "category_id": 7, "iscrowd": 0,
         "segmentation": {"size": [6, 8], "counts": [38, 3, 7]}},
        {"id": 14, "image_id": 1, "category_id": 3, "iscrowd": 1, "segmentation": _crowd_rle()},
        {"id": 15, "image_id": 1, "category_id": 9, "iscrowd": 0,
         "segmentation": [[2, 4, 4, 4, 4, 6, 2, 6]]},
    ]  # fmt: skip
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 6, "width": 8},
            {"id": 2, "file_name": "b.png", "height": 6, "width": 8},
        ],
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return images, path, coco


# Instances in file order, painted largest first (the crowd first, as void 255).
EXPECTED_INSTANCES = np.array(
    [[0, 0, 0, 0, 0, 0, 0, 0],
     [0, 2, 1, 2, 0, 0, 0, 0],
     [0, 2, 2, 2, 0, 0, 3, 0],
     [0, 0, 0, 0, 0, 0, 3, 0],
     [255, 255, 4, 4, 0, 0, 3, 0],
     [255, 255, 4, 4, 0, 0, 0, 0]], np.uint8,
)  # fmt: skip
# Classes: instance 1 dog (2), 2 cat (1), 3 dog (2), 4 bird (3).
EXPECTED_CLASSES = np.choose(
    np.where(EXPECTED_INSTANCES == 255, 5, EXPECTED_INSTANCES), [0, 2, 1, 2, 3, 255]
).astype(np.uint8)


def _build(tmp_path, images, annotations, name="mine", **kwargs):
    config = CocoFolderConfig(
        name=name, images={"train": str(images)}, annotations={"train": str(annotations)},
        **kwargs,
    )  # fmt: skip
    builder = CocoFolder(config=config, data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare()
    return builder


def _records(builder, split="train"):
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return {ex["image/filename"].decode(): ex for ex in tfds.as_numpy(ds)}


def test_constructed_annotations_by_hand(tmp_path):
    images, path, _ = _constructed(tmp_path)
    builder = _build(tmp_path, images, path)
    meta = builder.info.metadata
    assert [c["name"] for c in meta["categories"]] == ["cat", "dog", "bird"]
    assert meta["num_classes"] == 3 and meta["void_label"] == 255
    records = _records(builder)
    a, b = records["a.png"], records["b.png"]
    np.testing.assert_array_equal(a["instance_mask"][..., 0], EXPECTED_INSTANCES)
    np.testing.assert_array_equal(a["class_mask"][..., 0], EXPECTED_CLASSES)
    np.testing.assert_array_equal(a["image"], np.asarray(Image.open(images / "a.png")))
    assert a["image/id"] == 1 and not b["instance_mask"].any() and not b["class_mask"].any()

    # The evaluators' reader: void (the crowd) becomes -1 in both maps.
    data = {"name": "coco_folder/mine", "data_dir": str(tmp_path / "tfds")}
    batch = next(dense_data.dense_label_batches(data, "train", batch_size=2, image_size=8,
                                                max_mask_size=8))  # fmt: skip
    row = int(np.flatnonzero((batch["instance_mask"] > 0).any((1, 2)))[0])
    inst = np.where(EXPECTED_INSTANCES == 255, -1, EXPECTED_INSTANCES.astype(np.int32))
    cls = np.where(EXPECTED_CLASSES == 255, -1, EXPECTED_CLASSES.astype(np.int32))
    np.testing.assert_array_equal(batch["instance_mask"][row, :6], inst)
    np.testing.assert_array_equal(batch["class_mask"][row, :6], cls)


def _photo(name, scale=4):
    image = Image.fromarray(getattr(skimage.data, name)())
    return image.resize((image.width // scale, image.height // scale), Image.BILINEAR)


def _boundary_band(mask, width=2):
    """Pixels within `width` (4-connected steps) of the mask's edge, inside or outside: where two
    rasterisations of one polygon may differ (pycocotools and skimage place a slanted edge up
    to a pixel apart, which is two 4-connected steps on a diagonal)."""
    return ndimage.binary_dilation(mask, iterations=width) & ~ndimage.binary_erosion(
        mask, iterations=width
    )


POLYGONS = {  # (x, y) vertices in pixels, category, iscrowd; a crowd region on the saucer
    "astronaut.jpg": [([(40, 20), (90, 15), (100, 70), (60, 110), (30, 80)], 1, 0),
                      ([(5, 95), (35, 100), (20, 125)], 2, 0)],
    "coffee.png": [([(30, 10), (120, 20), (110, 60), (40, 55)], 2, 0),
                   ([(10, 70), (140, 70), (140, 95), (10, 95)], 1, 1)],
    "chelsea.png": [([(20.5, 10.5), (80.5, 12), (70, 60.25), (15, 50)], 1, 0)],
}  # fmt: skip


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """`coco_folder/drawn`: three skimage photographs with the `POLYGONS`, built from the command
    line. Returns (data_dir, image sizes, command output)."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("coco")
    root = tmp / "photos"
    root.mkdir()
    coco = {"images": [], "annotations": [],
            "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]}  # fmt: skip
    sizes = {}
    for i, (fname, polys) in enumerate(POLYGONS.items()):
        photo = _photo(fname.split(".")[0])
        photo.save(root / fname, quality=95)
        sizes[fname] = (photo.height, photo.width)
        coco["images"].append(
            {"id": i, "file_name": fname, "height": photo.height, "width": photo.width}
        )
        for j, (pts, cat, crowd) in enumerate(polys):
            coco["annotations"].append({
                "id": 100 * i + j, "image_id": i, "category_id": cat, "iscrowd": crowd,
                "segmentation": [[float(v) for p in pts for v in p]],
            })  # fmt: skip
    ann = tmp / "train.json"
    ann.write_text(json.dumps(coco))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        folder_builders.main(["coco", "--images", f"train={root}", "--annotations", f"train={ann}",
                              "--data_dir", str(tmp / "d"), "--name", "drawn"])  # fmt: skip
    return str(tmp / "d"), sizes, out.getvalue()


def test_photographs_with_drawn_polygons(drawn):
    """The masks agree with scikit-image's independent rasterisation of the polygons except
    along their edges."""
    data_dir, sizes, output = drawn
    assert "coco_folder/drawn/1.0.0 ready" in output
    builder = tfds.builder("coco_folder/drawn", data_dir=data_dir)
    records = _records(builder)
    assert sorted(records) == sorted(POLYGONS)
    for fname, polys in POLYGONS.items():
        ex = records[fname]
        assert ex["image"].shape[:2] == sizes[fname]
        inst, cls = ex["instance_mask"][..., 0], ex["class_mask"][..., 0]
        instance_id = 0
        for pts, cat, crowd in polys:
            xy = np.asarray(pts)
            reference = np.zeros(sizes[fname], bool)
            rr, cc = skimage.draw.polygon(xy[:, 1], xy[:, 0], sizes[fname])
            reference[rr, cc] = True
            if crowd:
                got, value_cls = inst == 255, 255
            else:
                instance_id += 1
                got, value_cls = inst == instance_id, cat
            disagree = got ^ reference
            assert not (disagree & ~_boundary_band(reference)).any(), fname
            assert disagree.sum() < 0.1 * reference.sum()
            np.testing.assert_array_equal(cls[got], value_cls)
        assert set(np.unique(inst)) <= {0, 255} | set(range(1, instance_id + 1))


def test_training_fh_generation_and_evaluators_read_it(drawn, tmp_path):
    """DetCon's `mask_source=gt` views, FH generation, object discovery (ABO^i and ABO^c) and
    the segmentation probe read it, the crowd region void (-1) throughout."""
    import jax

    from common import train
    from common.data import fh_masks, pipeline
    from common.eval import run_evaluators
    from tests import helpers

    data_dir, _, _ = drawn
    data = {"name": "coco_folder/drawn", "data_dir": data_dir, "mask_source": "gt",
            "image_size": 64, "crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "flip": False,
            "shuffle_buffer": 1}  # fmt: skip
    batch = next(pipeline.make_pretrain_iterator(data, global_batch_size=3, seed=0))
    # Whole images: each view holds its image's instances, and the coffee's crowd region is -1.
    ids = [set(np.unique(m)) for m in batch["mask1"]]
    assert sorted(ids, key=len) == [{0, 1}, {-1, 0, 1}, {0, 1, 2}]
    derived = fh_masks.build_fh_dataset(
        "coco_folder/drawn", data_dir, fh_settings=((100.0, 20),), use_beam=False
    )
    name = derived.info.full_name.rsplit("/", 1)[0]
    records = _records(derived)
    source = _records(tfds.builder("coco_folder/drawn", data_dir=data_dir))
    for fname, ex in records.items():
        assert ex["fh_masks"].shape[1:] == ex["image"].shape[:2]
        np.testing.assert_array_equal(ex["instance_mask"], source[fname]["instance_mask"])

    config = helpers.tiny_config("byol", data_dir)
    setup = train.build(config, num_examples=256)
    mesh = train.create_mesh()
    state = jax.jit(lambda r: train.init_state(setup, r))(train.init_rng(0))
    common = {"dataset": name, "batch_size": 8, "image_size": 32, "max_mask_size": 160}
    config.evals.discovery.update(common, split="train", segments="instance_mask")
    exact = run_evaluators(setup, state, mesh=mesh, names=["discovery"])
    # The stored instance masks as segments: every object found exactly, the crowd no instance.
    assert exact["discovery/abo_i"] == pytest.approx(1.0)
    assert exact["discovery/num_instances"] == 4 and "discovery/abo_c" in exact
    config.evals.discovery.segments = "fh"
    fh = run_evaluators(setup, state, mesh=mesh, names=["discovery"])
    assert 0.0 < fh["discovery/abo_i"] < 1.0 and 0.0 < fh["discovery/abo_c"] < 1.0
    config.evals.seg_probe.update(common, split="train", num_classes=3, epochs=2)
    probe = run_evaluators(setup, state, mesh=mesh, names=["seg_probe"])
    assert 0.0 < probe["seg_probe/miou"] <= 1.0
    assert probe["seg_probe/num_classes_seen"] >= 2


def _write(tmp_path, coco, name="bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return path


def test_clear_errors(tmp_path):
    images, path, coco = _constructed(tmp_path)

    def fails(broken, match, **kwargs):
        bad = _write(tmp_path, broken)
        with pytest.raises(CocoAnnotationError, match=match):
            _build(tmp_path, images, bad, name=f"bad{abs(hash(match)) % 10**6}", **kwargs)

    def variant(**changes):
        out = json.loads(json.dumps(coco))
        for key, value in changes.items():
            out[key] = value(out[key])
        return out

    missing = variant(images=lambda ims: ims + [
        {"id": 3, "file_name": "gone.png", "height": 6, "width": 8}])  # fmt: skip
    fails(missing, r"image 3 names gone\.png, but .*gone\.png does not exist")
    stray = variant(annotations=lambda a: a + [dict(a[0], id=99, image_id=42)])
    fails(stray, r"annotation 99 names image id 42, which is not in `images`")
    unknown = variant(annotations=lambda a: a + [dict(a[0], id=98, category_id=5)])
    fails(unknown, r"annotation 98 has category_id 5, which is not in `categories`")
    outside = variant(annotations=lambda a: a + [
        dict(a[0], id=97, segmentation=[[1, 1, 12.5, 1, 4, 3]])])  # fmt: skip
    fails(outside, r"annotation 97 \(image a\.png\): polygon vertex \(12\.5, 1\) lies outside "
                   r"the 8x6")  # fmt: skip
    wrong_rle = variant(annotations=lambda a: a + [
        dict(a[0], id=96, segmentation={"size": [5, 8], "counts": [40]})])  # fmt: skip
    fails(wrong_rle, r"annotation 96.*RLE size \[5, 8\]")
    wrong_size = variant(images=lambda ims: [dict(ims[0], width=9)] + ims[1:])
    fails(wrong_size, r"image 1 is 9x6 \(width x height\) in the annotations but .*a\.png is 8x6")
    no_key = variant(annotations=lambda a: [{k: v for k, v in a[0].items() if k != "image_id"}])
    fails(no_key, r"annotation lacks \['image_id'\]")

    unreadable = tmp_path / "broken.json"
    unreadable.write_text('{"images": [')
    with pytest.raises(CocoAnnotationError, match=r"cannot read COCO annotations .*broken\.json"):
        _build(tmp_path, images, unreadable, name="broken")
    with pytest.raises(CocoAnnotationError, match=r"cannot read COCO annotations .*nowhere\.json"):
        _build(tmp_path, images, tmp_path / "nowhere.json", name="nowhere")

    # An undecodable image: an error naming it, or skipped and counted.
    (images / "b.png").write_bytes(b"not a png")
    with pytest.raises(folder_builders.CorruptFileError, match=r"b\.png"):
        _build(tmp_path, images, path, name="corrupt")
    skipped = _build(tmp_path, images, path, name="skipping", skip_corrupt=True)
    assert skipped.info.metadata["num_skipped"] == 1
    assert sorted(_records(skipped)) == ["a.png"]


def test_split_categories_must_agree(tmp_path):
    images, path, coco = _constructed(tmp_path)
    other = _write(tmp_path, dict(coco, categories=CATEGORIES[:2] + [{"id": 7, "name": "hound"}]))
    config = CocoFolderConfig(
        name="two", images={"train": str(images), "validation": str(images)},
        annotations={"train": str(path), "validation": str(other)},
    )  # fmt: skip
    with pytest.raises(CocoAnnotationError, match="categories of .*bad.json differ"):
        CocoFolder(config=config, data_dir=str(tmp_path / "tfds"))
