"""Data: the Cityscapes loader, the procedural street benchmark, and augmentation."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from encseg.cipher import CipherTransform, Scheme
from encseg.data import (
    CLASS_NAMES,
    PALETTE,
    AugmentConfig,
    CityscapesDataset,
    TrainTransform,
    augment,
    colorize,
    generate_streets,
    label_ids_to_train_ids,
    render_scene,
)
from encseg.data.augment import pad_to, photometric_distortion, random_crop, random_rescale
from encseg.data.cityscapes import TRAIN_ID_TO_LABEL_ID, train_ids_to_label_ids
from encseg.errors import UserError

# -- Cityscapes -----------------------------------------------------------------------------------


def test_label_ids_map_to_the_19_train_ids_and_everything_else_to_ignore():
    ids = np.arange(256, dtype=np.uint8)
    train = label_ids_to_train_ids(ids)
    official = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
    for label_id in range(256):
        assert train[label_id] == official.get(label_id, 255)
    assert len(CLASS_NAMES) == 19 and PALETTE.shape == (19, 3)
    assert tuple(PALETTE[0]) == (128, 64, 128) and tuple(PALETTE[18]) == (119, 11, 32)
    roundtrip = label_ids_to_train_ids(train_ids_to_label_ids(np.arange(19, dtype=np.uint8)))
    assert (roundtrip == np.arange(19)).all()


def test_colorize_uses_the_official_palette_and_black_for_ignore():
    lab = np.array([[0, 13], [255, 10]], dtype=np.uint8)
    rgb = colorize(lab)
    assert tuple(rgb[0, 0]) == (128, 64, 128) and tuple(rgb[0, 1]) == (0, 0, 142)
    assert tuple(rgb[1, 0]) == (0, 0, 0) and tuple(rgb[1, 1]) == (70, 130, 180)


def _write_tiny_cityscapes(root, label_kind="labelIds"):
    rng = np.random.default_rng(0)
    written = {}
    for split, cities in (("train", ("aachen", "bremen")), ("val", ("lindau",))):
        for city in cities:
            (root / "leftImg8bit" / split / city).mkdir(parents=True)
            (root / "gtFine" / split / city).mkdir(parents=True)
            for k in range(2):
                stem = f"{city}_{k:06d}_000019"
                img = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)
                train_ids = rng.integers(0, 19, (8, 16)).astype(np.uint8)
                train_ids[0, 0] = 255
                Image.fromarray(img).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                gt = root / "gtFine" / split / city
                if label_kind == "labelIds":
                    label_ids = TRAIN_ID_TO_LABEL_ID[np.minimum(train_ids, 18)]
                    label_ids[0, 0] = 3  # 'out of roi': ignored
                    Image.fromarray(label_ids).save(gt / f"{stem}_gtFine_labelIds.png")
                else:
                    Image.fromarray(train_ids).save(gt / f"{stem}_gtFine_labelTrainIds.png")
                written[(split, city, k)] = (img, train_ids)
    return written


@pytest.mark.parametrize("label_kind", ["labelIds", "labelTrainIds"])
def test_cityscapes_layout_loads_images_and_train_ids(tmp_path, label_kind):
    written = _write_tiny_cityscapes(tmp_path, label_kind)
    ds = CityscapesDataset(tmp_path, "train")
    assert len(ds) == 4
    assert [it.name for it in ds.items] == [
        "aachen_000000_000019", "aachen_000001_000019", "bremen_000000_000019", "bremen_000001_000019"]  # fmt: skip
    img, lab = ds[2]
    want_img, want_lab = written[("train", "bremen", 0)]
    assert img.dtype == np.uint8 and img.shape == (8, 16, 3)
    assert (img == want_img).all() and (lab == want_lab).all()
    assert lab[0, 0] == 255
    assert len(CityscapesDataset(tmp_path, "val")) == 2


def test_cityscapes_prefers_label_train_ids_when_both_exist(tmp_path):
    _write_tiny_cityscapes(tmp_path, "labelIds")
    gt = tmp_path / "gtFine" / "val" / "lindau"
    Image.fromarray(np.full((8, 16), 5, np.uint8)).save(gt / "lindau_000000_000019_gtFine_labelTrainIds.png")
    _, lab = CityscapesDataset(tmp_path, "val")[0]
    assert (lab == 5).all()


def test_cityscapes_errors_name_what_was_expected(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        CityscapesDataset(tmp_path / "nope")
    with pytest.raises(UserError, match=r"leftImg8bit/train"):
        CityscapesDataset(tmp_path)
    _write_tiny_cityscapes(tmp_path)
    with pytest.raises(UserError, match=r"leftImg8bit/test"):
        CityscapesDataset(tmp_path, "test")
    (tmp_path / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(UserError, match=r"aachen_000001_000019_gtFine_labelTrainIds\.png"):
        CityscapesDataset(tmp_path, "train")


def test_cityscapes_dataset_passes_epoch_and_index_to_its_transform(tmp_path):
    _write_tiny_cityscapes(tmp_path)
    seen = []
    ds = CityscapesDataset(tmp_path, "val", transform=lambda i, l, sid: seen.append(sid) or sid)
    assert ds[(3, 1)] == (3, 1) and ds[0] == (0, 0)


# -- the street benchmark --------------------------------------------------------------------------


def test_render_scene_is_a_pure_function_of_seed_and_size():
    a_img, a_lab = render_scene(7, (96, 192))
    b_img, b_lab = render_scene(7, (96, 192))
    c_img, _ = render_scene(8, (96, 192))
    assert a_img.shape == (96, 192, 3) and a_img.dtype == np.uint8
    assert a_lab.shape == (96, 192) and a_lab.dtype == np.uint8
    assert (a_img == b_img).all() and (a_lab == b_lab).all()
    assert (a_img != c_img).mean() > 0.5
    assert a_lab.max() < 19  # every pixel gets a class: sky is the background


def test_streets_show_at_least_12_classes_regularly():
    presence = np.zeros(19)
    n = 30
    for seed in range(n):
        _, lab = render_scene(seed, (128, 256))
        presence += np.bincount(lab.ravel(), minlength=256)[:19] > 0
    regular = [CLASS_NAMES[c] for c in range(19) if presence[c] / n >= 0.4]
    assert len(regular) >= 12, regular
    for name in ("road", "sidewalk", "building", "vegetation", "car", "pole"):
        assert name in regular
    assert (presence > 0).sum() >= 17  # nearly every class shows up somewhere


def test_generate_streets_writes_the_cityscapes_layout(tmp_path):
    generate_streets(tmp_path, 3, 2, (64, 128), seed=5, workers=1)
    train = CityscapesDataset(tmp_path, "train")
    val = CityscapesDataset(tmp_path, "val")
    assert len(train) == 3 and len(val) == 2
    img, lab = train[1]
    assert img.shape == (64, 128, 3)
    from encseg.data.streets import scene_seed

    want_img, want_lab = render_scene(scene_seed(5, "train", 1), (64, 128))
    assert (img == want_img).all() and (lab == want_lab).all()
    label_ids = np.asarray(Image.open(train.items[1].label.with_name(train.items[1].name + "_gtFine_labelIds.png")))
    assert (label_ids_to_train_ids(label_ids) == lab).all()
    assert scene_seed(5, "train", 0) != scene_seed(5, "val", 0)
    assert (tmp_path / "streets.json").is_file()


def test_data_streets_command(tmp_path, run_cli):
    code, out, err = run_cli("data", "streets", "--out", tmp_path / "s", "--train", 2, "--val", 1, "--size", "64x96", "--workers", 1)
    assert code == 0, err
    assert len(CityscapesDataset(tmp_path / "s", "train")) == 2
    code, _, err = run_cli("data", "streets", "--out", tmp_path / "t", "--size", "64by96")
    assert code == 2 and "HEIGHTxWIDTH" in err


# -- augmentation -----------------------------------------------------------------------------------


def _coded_pair(h=64, w=96):
    """An image whose colour encodes its label (large regions, so resampling keeps the code inside)."""
    lab = np.zeros((h, w), np.uint8)
    lab[: h // 3] = 10
    lab[h // 3 :, : w // 2] = 0
    lab[h // 3 :, w // 2 :] = 13
    lab[h // 2 : h // 2 + 8, 8:24] = 11
    return PALETTE[lab].copy(), lab


def _agreement(img, lab):
    valid = lab != 255
    return (np.abs(img[valid].astype(int) - PALETTE[lab[valid]].astype(int)).max(axis=1) <= 2).mean()


def test_label_map_follows_crop_and_flip_exactly():
    img, lab = _coded_pair()
    cfg = AugmentConfig(crop=(48, 64), ratio_range=(1.0, 1.0), photometric=False, flip_prob=0.5)
    for seed in range(10):
        out_img, out_lab = augment(img, lab, cfg, np.random.default_rng(seed))
        assert out_img.shape == (48, 64, 3) and out_lab.shape == (48, 64)
        assert _agreement(out_img, out_lab) == 1.0


def test_label_map_follows_rescale_up_to_edge_blur():
    img, lab = _coded_pair(128, 192)
    cfg = AugmentConfig(crop=(96, 128), ratio_range=(0.5, 2.0), photometric=False, flip_prob=0.5)
    for seed in range(20):
        out_img, out_lab = augment(img, lab, cfg, np.random.default_rng(seed))
        assert out_img.shape == (96, 128, 3) and out_lab.shape == (96, 128)
        assert _agreement(out_img, out_lab) > 0.9  # only pixels on region edges are blended


def test_rescale_ratio_applies_to_the_base_size():
    img, lab = _coded_pair(64, 96)
    rng = np.random.default_rng(0)
    for _ in range(20):
        out, l2 = random_rescale(img, lab, rng, (128, 192), (0.5, 2.0))
        assert out.shape[:2] == l2.shape
        assert 64 - 1 <= out.shape[0] <= 256 + 1 and abs(out.shape[1] / out.shape[0] - 1.5) < 0.05


def test_crop_avoids_crops_dominated_by_one_class_when_it_can():
    lab = np.zeros((100, 100), np.uint8)
    lab[:, 90:] = 1  # a thin strip of another class
    img = np.zeros((100, 100, 3), np.uint8)
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(30):
        _, c = random_crop(img, lab, rng, (20, 20), cat_max_ratio=0.75)
        counts = np.bincount(c.ravel())
        ratios.append(counts.max() / counts.sum())
    assert np.mean(np.array(ratios) < 0.75) > 0.5  # without the rule, only ~5% of crops qualify


def test_padding_fills_ignore_in_the_label():
    img, lab = np.zeros((10, 12, 3), np.uint8), np.zeros((10, 12), np.uint8)
    pi, pl = pad_to(img, lab, (16, 16))
    assert pi.shape == (16, 16, 3) and (pl[10:] == 255).all() and (pl[:, 12:] == 255).all() and (pl[:10, :12] == 0).all()


def test_photometric_distortion_changes_colours_but_not_shape():
    img, _ = _coded_pair()
    changed = 0
    for seed in range(10):
        out = photometric_distortion(img, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.uint8
        changed += int((out != img).any())
        assert (out == photometric_distortion(img, np.random.default_rng(seed))).all()
    assert changed >= 8


def test_train_transform_is_reproducible_from_epoch_and_index():
    img, lab = _coded_pair()
    t = TrainTransform(AugmentConfig(crop=(48, 64)), seed=3)
    a = t(img, lab, (2, 7))
    b = t(img, lab, (2, 7))
    c = t(img, lab, (3, 7))
    assert a[0].shape == (3, 48, 64) and a[0].dtype.is_floating_point is False and a[1].dtype.is_floating_point is False
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert not ((a[0] == c[0]).all() and (a[1] == c[1]).all())


def test_per_image_encryption_moves_the_label_map_with_the_image():
    img, lab = _coded_pair()
    cfg = AugmentConfig(crop=(48, 64), photometric=False)
    scheme = Scheme.parse("bs-ps", block_size=16)  # geometry only, so colours still encode labels
    t = TrainTransform(cfg, CipherTransform(scheme, "per-image"), seed=0)
    plain = TrainTransform(cfg, None, seed=0)
    x, y = t(img, lab, (0, 0))
    px, py = plain(img, lab, (0, 0))
    assert not (x == px).all()  # pixels moved
    assert sorted(y.flatten().tolist()) == sorted(py.flatten().tolist())  # a permutation of the same labels
    agree = _agreement(x.numpy().transpose(1, 2, 0), y.numpy().astype(np.uint8))
    assert agree == _agreement(px.numpy().transpose(1, 2, 0), py.numpy().astype(np.uint8)) > 0.9
    x2, _ = t(img, lab, (0, 0))
    assert not (x2 == x).all()  # a fresh key per call


def test_see_through_parts_are_labelled_whole_without_touching_the_image():
    """Mesh fences and wheel interiors: the picture shows what is behind, the label covers the object
    (as Cityscapes' polygons do)."""
    from encseg.data.streets import FENCE, Canvas

    c = Canvas(8, 8, {"fine": np.zeros((8, 8), np.float32)})
    c.img[:] = 7.0
    c.lab[:] = 3
    box = (2, 6, 2, 6)
    mask = np.zeros((4, 4), bool)
    mask[1:3] = True
    c.label_only(box, mask, FENCE, 5.0)
    assert (c.img == 7.0).all()
    assert (c.lab[3:5, 2:6] == FENCE).all() and (c.lab[:3] == 3).all() and (c.lab[5:] == 3).all()
    ring = Canvas(32, 32, {"fine": np.zeros((32, 32), np.float32)})
    ring.ellipse(16, 16, 10, 10, (200, 0, 0), 18, 1.0, inner=0.7, label_inner=True)
    assert ring.lab[16, 16] == 18 and ring.img[16, 16, 0] == 0.0  # the hub: labelled, not painted
    assert ring.lab[16, 25] == 18 and ring.img[16, 25, 0] == 200.0  # the tyre: both
