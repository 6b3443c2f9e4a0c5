"""Dataset loading: manifests, the SAVOIAS/IC9600/VISC-C loaders, folders, dispatch and validation."""

import json
import re
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyica.data import (
    ComplexityDataset,
    format_validation_report,
    list_datasets,
    load_dataset,
    load_folder,
    load_ic9600,
    load_savoias,
    load_viscc,
    read_manifest,
    read_xlsx_rows,
    validate_dataset,
    write_manifest,
)
from pyica.loading import ImageLoadError, load_image

SAVOIAS = Path(__file__).resolve().parents[2] / "shared/data/savoias"
# Image counts per category in the compact copy, from its README.
SAVOIAS_COUNTS = {"advertisement": 198, "art": 420, "interior_design": 100, "objects": 200, "scenes": 200,
                  "suprematism": 100, "visualizations": 198}

needs_savoias = pytest.mark.skipif(not (SAVOIAS / "labels.csv").is_file(), reason=f"SAVOIAS not at {SAVOIAS}")


def save_image(path: Path, seed: int = 0, size=(24, 16), fmt=None) -> Path:
    """A small noise image; different seeds give different bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def write_xlsx(path: Path, rows: list[list]) -> Path:
    """A minimal valid xlsx: text cells via sharedStrings, numbers inline in <v>."""
    shared: list[str] = []
    xml_rows = []
    for r, row in enumerate(rows, start=1):
        cells = []
        for c, value in enumerate(row):
            ref = f"{chr(ord('A') + c)}{r}"
            if isinstance(value, str):
                if value not in shared:
                    shared.append(value)
                cells.append(f'<c r="{ref}" t="s"><v>{shared.index(value)}</v></c>')
            else:
                cells.append(f'<c r="{ref}"><v>{value}</v></c>')
        xml_rows.append(f'<row r="{r}">{"".join(cells)}</row>')
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    members = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/worksheets/sheet1.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            '<Override PartName="/xl/sharedStrings.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
            "</Types>"
        ),
        "_rels/.rels": (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
            'officeDocument" Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{main}" xmlns:r="{rel}">'
            '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
            'worksheet" Target="worksheets/sheet1.xml"/></Relationships>'
        ),
        "xl/worksheets/sheet1.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{main}">'
            f'<sheetData>{"".join(xml_rows)}</sheetData></worksheet>'
        ),
        "xl/sharedStrings.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><sst xmlns="{main}" count="{len(shared)}">'
            + "".join(f"<si><t>{s}</t></si>" for s in shared) + "</sst>"
        ),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as book:
        for name, text in members.items():
            book.writestr(name, text)
    return path


# ---------------------------------------------------------------------------------------------- manifests


def test_manifest_round_trip_keeps_every_column(tmp_path):
    ds = ComplexityDataset(
        name="toy", root=tmp_path,
        paths=np.array(["a/1.png", "a/2.png", "b/3.png", "b/4.png"]),
        scores=np.array([0.1, 2.5, np.nan, 1 / 3]),
        categories=np.array(["a", "a", "b", "b"]),
        groups=np.array(["g1", "", "g1", ""]),
        splits={"official": np.array(["train", "val", "test", ""]),
                "fold1": np.array(["test", "train", "train", "train"])},
        per_category_scale=True, score_scale=(0.0, 100.0),
    )
    csv_path = write_manifest(ds, tmp_path / "toy.csv")
    back = read_manifest(csv_path)
    assert back.name == "toy" and back.root == tmp_path
    assert back.paths.tolist() == ds.paths.tolist()
    np.testing.assert_array_equal(back.scores, ds.scores)  # exact floats, nan kept
    assert back.categories.tolist() == ds.categories.tolist()
    assert back.groups.tolist() == ds.groups.tolist()
    assert {k: v.tolist() for k, v in back.splits.items()} == {k: v.tolist() for k, v in ds.splits.items()}
    assert back.per_category_scale and back.score_scale == (0.0, 100.0)
    header = csv_path.read_text().splitlines()[0]
    assert header == "image,score,category,group,fold1_split,split"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.csv", "toy.csv.meta.json"]  # no temp files left


def test_manifest_written_elsewhere_resolves_to_the_same_files(tmp_path):
    save_image(tmp_path / "data" / "x.png")
    ds = ComplexityDataset(name="d", root=tmp_path / "data", paths=np.array(["x.png"]), scores=np.array([1.0]),
                           categories=np.array([]), groups=np.array([]))
    inside = read_manifest(write_manifest(ds, tmp_path / "data" / "sub" / "m.csv"))
    outside = read_manifest(write_manifest(ds, tmp_path / "elsewhere" / "m.csv"))
    for back in (inside, outside):
        assert [Path(p).resolve() for p in back.full_paths()] == [(tmp_path / "data" / "x.png").resolve()]


@pytest.mark.parametrize("path_col, score_col", [("filename", "MOS"), ("Path", "complexity"), ("name", "gt")])
def test_manifest_column_aliases(tmp_path, path_col, score_col):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text(f"{path_col},{score_col},extra\nx.png,3,keep\ny.png,,drop\nz.png,NaN,\n")
    ds = read_manifest(csv_path)
    assert ds.paths.tolist() == ["x.png", "y.png", "z.png"]
    assert ds.scores[0] == 3 and np.isnan(ds.scores[1:]).all()
    assert ds.categories.tolist() == ["", "", ""] and ds.splits == {}


def test_manifest_explicit_columns_and_root(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("score,picture,rating\n9,x.png,0.5\n")
    ds = read_manifest(csv_path, root=tmp_path / "imgs", path_col="picture", score_col="rating")
    assert ds.paths.tolist() == ["x.png"] and ds.scores.tolist() == [0.5]
    assert ds.full_path(0) == tmp_path / "imgs" / "x.png"


def test_manifest_split_values_are_normalised(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("image,score,split,cv_split\na,1,Train,valid\nb,2,validation,test\nc,3,TEST,\n")
    ds = read_manifest(csv_path)
    assert ds.splits["official"].tolist() == ["train", "val", "test"]
    assert ds.splits["cv"].tolist() == ["val", "test", ""]


def test_manifest_duplicate_of_links_rows_into_groups(tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("image,score,category,duplicate_of\nart/1.jpg,5,art,sup/0.jpg\nart/2.jpg,6,art,\n"
                        "sup/0.jpg,9,sup,art/1.jpg\n")
    ds = read_manifest(csv_path)
    assert ds.groups.tolist() == ["art/1.jpg", "", "art/1.jpg"]
    assert ds.name == tmp_path.name  # a generic file name ("labels") takes the folder's name


def test_manifest_without_path_column_lists_the_columns(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("picture,score\nx.png,1\n")
    with pytest.raises(ValueError, match=r"m\.csv.*no image path column.*columns found: picture, score"):
        read_manifest(csv_path)
    csv_path.write_text("image,value\nx.png,1\n")
    with pytest.raises(ValueError, match=r"no score column.*columns found: image, value"):
        read_manifest(csv_path)


@pytest.mark.parametrize(
    "body, message",
    [
        ("image,score\na.png,1\nb.png,high\n", r"m\.csv, line 3: score 'high' in column 'score' is not a number"),
        ("image,score\na.png,1,extra\n", r"m\.csv, line 2: 3 fields, the header has 2"),
        ("image,score,split\na.png,1,holdout\n", r"m\.csv, line 2: split value 'holdout'"),
        ("image,score\n,1\n", r"m\.csv, line 2: empty image path"),
        ("", r"m\.csv: empty manifest"),
        ("image,Image,score\n", r"m\.csv: repeated column"),
    ],
)
def test_bad_manifest_errors_name_file_and_line(tmp_path, body, message):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text(body)
    with pytest.raises(ValueError, match=message):
        read_manifest(csv_path)


def test_missing_manifest_is_a_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_manifest(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------------- xlsx


def test_xlsx_reader_reads_strings_numbers_and_gaps(tmp_path):
    path = write_xlsx(tmp_path / "t.xlsx", [["gt", "note"], [12, "a"], [7.5]])
    assert read_xlsx_rows(path) == [["gt", "note"], [12.0, "a"], [7.5]]


def test_xlsx_reader_rejects_non_xlsx(tmp_path):
    bad = tmp_path / "bad.xlsx"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.xlsx: not an xlsx file"):
        read_xlsx_rows(bad)


# ---------------------------------------------------------------------------------------------- SAVOIAS


def make_savoias_repository(root: Path) -> None:
    """A tiny esaraee/Savoias-Dataset layout: 3 categories, one image absent, one shared between two."""
    gt = root / "Ground truth" / "xlsx"
    write_xlsx(gt / "global_ranking_ad.xlsx", [["gt"], [10], [90], [50]])
    write_xlsx(gt / "global_ranking_art.xlsx", [["gt"], [0], [100]])
    write_xlsx(gt / "global_ranking_sup.xlsx", [["gt"], [40], [60]])
    save_image(root / "Images/Advertisement/0.jpg", seed=1)
    save_image(root / "Images/Advertisement/1.png", seed=2)
    # Advertisement/2 is labelled but absent, like the >4 MiB files snapshots lack.
    save_image(root / "Images/Art/0.jpg", seed=3)
    save_image(root / "Images/Art/1.jpg", seed=4)
    save_image(root / "Images/Suprematism/0.jpg", seed=5)
    (root / "Images/Suprematism/1.jpg").write_bytes((root / "Images/Art/1.jpg").read_bytes())  # same picture
    (root / "Images/Name_Mappings").mkdir()  # a non-category folder of the repository


def test_savoias_repository_layout(tmp_path):
    make_savoias_repository(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_savoias(tmp_path)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert re.search(r"1 labelled image\(s\) not found.*Advertisement/2\.\* \(score 50\)", messages[1])
    assert "categories absent" in messages[0] and "interior_design" in messages[0]
    assert ds.name == "savoias" and ds.per_category_scale and ds.score_scale == (0, 100)
    assert ds.paths.tolist() == ["Images/Advertisement/0.jpg", "Images/Advertisement/1.png", "Images/Art/0.jpg",
                                 "Images/Art/1.jpg", "Images/Suprematism/0.jpg", "Images/Suprematism/1.jpg"]
    assert ds.scores.tolist() == [10, 90, 0, 100, 40, 60]
    assert ds.categories.tolist() == ["advertisement"] * 2 + ["art"] * 2 + ["suprematism"] * 2
    assert ds.groups.tolist() == ["", "", "", "Images/Art/1.jpg", "", "Images/Art/1.jpg"]


def test_savoias_repository_needs_ground_truth_for_its_images(tmp_path):
    make_savoias_repository(tmp_path)
    save_image(tmp_path / "Images/Objects/0.jpg")
    with pytest.raises(FileNotFoundError, match="'Objects'.*global_ranking_objects.xlsx"):
        load_savoias(tmp_path)


def test_savoias_compact_layout(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "image,score,category,orig_width,orig_height,source_file,duplicate_of\n"
        "art/0.jpg,60,art,10,10,Images/Art/0.jpg,suprematism/0.jpg\n"
        "art/1.jpg,20,art,10,10,Images/Art/1.jpg,\n"
        "suprematism/0.jpg,97,suprematism,10,10,Images/Suprematism/0.jpg,art/0.jpg\n"
    )
    for i, rel in enumerate(["art/0.jpg", "art/1.jpg", "suprematism/0.jpg"]):
        save_image(tmp_path / rel, seed=i)
    for ds in (load_savoias(tmp_path), load_dataset(tmp_path), load_dataset(tmp_path / "labels.csv")):
        assert ds.name == "savoias" and ds.per_category_scale and ds.score_scale == (0, 100)
        assert ds.groups.tolist() == ["art/0.jpg", "", "art/0.jpg"]


def test_savoias_unknown_layout_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels.csv.*Images/"):
        load_savoias(tmp_path)


# ---------------------------------------------------------------------------------------------- IC9600


def test_ic9600_layout(tmp_path):
    for i, name in enumerate(["abstract_1.jpg", "person_2.jpg", "scenes_3.jpg", "plain.jpg"]):
        save_image(tmp_path / "images" / name, seed=i)
    (tmp_path / "train.txt").write_text("abstract_1.jpg  0.25\nperson_2.jpg  0.5\n\n")
    (tmp_path / "test.txt").write_text("scenes_3.jpg  0.75\nplain.jpg\t0.0\n")
    ds = load_ic9600(tmp_path)
    assert ds.name == "ic9600" and ds.score_scale == (0, 1)
    assert ds.paths.tolist() == ["images/abstract_1.jpg", "images/person_2.jpg", "images/scenes_3.jpg",
                                 "images/plain.jpg"]
    assert ds.scores.tolist() == [0.25, 0.5, 0.75, 0.0]
    assert ds.categories.tolist() == ["abstract", "person", "scenes", ""]
    assert ds.splits["official"].tolist() == ["train", "train", "test", "test"]
    assert all(p.is_file() for p in map(Path, ds.full_paths()))
    assert load_dataset(tmp_path).paths.tolist() == ds.paths.tolist()  # a folder in this layout is recognised


def test_ic9600_img_folder_and_bad_line(tmp_path):
    save_image(tmp_path / "img" / "objects_1.jpg")
    (tmp_path / "train.txt").write_text("objects_1.jpg  0.5\n")
    assert load_ic9600(tmp_path).paths.tolist() == ["img/objects_1.jpg"]
    (tmp_path / "test.txt").write_text("objects_1.jpg  0.5\nobjects_2.jpg  high\n")
    with pytest.raises(ValueError, match=r"test\.txt, line 2: score 'high'"):
        load_ic9600(tmp_path)


def test_ic9600_needs_images_and_labels(tmp_path):
    with pytest.raises(FileNotFoundError, match="images/"):
        load_ic9600(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="train.txt"):
        load_ic9600(tmp_path)


# ---------------------------------------------------------------------------------------------- VISC-C


def test_viscc_bare_names_resolve_in_scenes_folder(tmp_path):
    base = tmp_path / "VISC-C"
    save_image(base / "scenes" / "sun_aaa.jpg", seed=1)
    save_image(base / "scenes" / "sun_bbb.jpg", seed=2)
    (base / "labels.csv").write_text("image,score\nsun_aaa.jpg,3.5\nsun_bbb.jpg,7\n")
    for root in (tmp_path, base):
        ds = load_viscc(root)
        assert ds.name == "visc-c"
        assert ds.paths.tolist() == ["scenes/sun_aaa.jpg", "scenes/sun_bbb.jpg"]
        assert ds.scores.tolist() == [3.5, 7.0]
        assert all(Path(p).is_file() for p in ds.full_paths())
    assert load_dataset("viscc", root=tmp_path).paths.tolist() == ["scenes/sun_aaa.jpg", "scenes/sun_bbb.jpg"]


def test_viscc_without_labels_says_what_it_expects(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels.csv.*images/ or scenes/"):
        load_viscc(tmp_path)


# ---------------------------------------------------------------------------------------------- folders, dispatch


def test_folder_loader_finds_images_sorted_with_categories(tmp_path):
    save_image(tmp_path / "top.png")
    save_image(tmp_path / "cats" / "b.jpg")
    save_image(tmp_path / "cats" / "a.JPG", fmt="JPEG")
    save_image(tmp_path / "dogs" / "deep" / "c.webp")
    save_image(tmp_path / ".cache" / "hidden.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_folder(tmp_path)
    assert ds.paths.tolist() == ["cats/a.JPG", "cats/b.jpg", "dogs/deep/c.webp", "top.png"]
    assert ds.categories.tolist() == ["cats", "cats", "dogs", ""]
    assert np.isnan(ds.scores).all() and not ds.labelled
    assert load_folder(tmp_path, recursive=False).paths.tolist() == ["top.png"]
    assert load_dataset(tmp_path).paths.tolist() == ds.paths.tolist()


def test_load_dataset_dispatch(tmp_path):
    assert set(list_datasets()) == {"savoias", "ic9600", "visc-c"}
    for name in ("savoias", "IC9600", "visc-c", "viscc"):
        with pytest.raises(ValueError, match="needs root="):
            load_dataset(name)
    with pytest.raises(FileNotFoundError, match="not a known dataset"):
        load_dataset(tmp_path / "nothing-here")
    (tmp_path / "labels.csv").write_text("image,score,category\nx.png,1,a\n")
    assert load_dataset(tmp_path).paths.tolist() == ["x.png"]
    assert load_dataset(tmp_path / "labels.csv", root=tmp_path / "r").full_path(0) == tmp_path / "r" / "x.png"
    with pytest.raises(ValueError, match="root= applies"):
        load_dataset(tmp_path, root=tmp_path)
    (tmp_path / "scores.json").write_text("{}")
    with pytest.raises(ValueError, match="not a .csv manifest"):
        load_dataset(tmp_path / "scores.json")


# ---------------------------------------------------------------------------------------------- validation


def test_validate_reports_missing_corrupt_and_duplicate_files(tmp_path):
    for i in range(4):
        save_image(tmp_path / f"img{i}.png", seed=i)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "labels.csv").write_text(
        "image,score,category,group,split\n"
        "img0.png,1,a,g,train\nimg1.png,2,a,g,test\nimg2.png,,b,,train\nimg3.png,4,b,,test\n"
        "corrupt.png,5,b,,train\nmissing.png,6,a,,test\nimg3.png,4,b,,\n"
    )
    ds = read_manifest(tmp_path / "labels.csv")
    report = validate_dataset(ds)
    json.dumps(report)  # plain JSON types only
    assert report["n"] == 7 and report["labelled"] == 6 and report["nan_scores"] == 1
    assert report["missing"] == ["missing.png"]
    assert [u["path"] for u in report["unreadable"]] == ["corrupt.png"]
    with pytest.raises(ImageLoadError) as err:
        load_image(tmp_path / "corrupt.png")
    assert report["unreadable"][0]["reason"] == err.value.reason
    assert report["duplicate_paths"] == [{"path": "img3.png", "count": 2}]
    assert report["categories"] == {"a": 3, "b": 4}
    assert report["scores"]["min"] == 1 and report["scores"]["max"] == 6
    assert report["scores_per_category"]["a"]["mean"] == pytest.approx(3.0)
    official = report["splits"]["official"]
    assert (official["train"], official["val"], official["test"], official["unassigned"]) == (3, 0, 3, 1)
    assert official["per_category"]["b"] == {"train": 2, "val": 0, "test": 1, "unassigned": 1, "invalid": 0}
    assert report["groups"]["groups"] == 1
    warnings = " | ".join(report["warnings"])
    assert "duplicate group" in warnings and "no score" in warnings and "more than once" in warnings

    text = format_validation_report(report)
    assert "1 missing, 1 unreadable" in text and "missing.png" in text and "corrupt.png" in text
    assert "split official: train 3, val 0, test 3, unassigned 1" in text

    quick = validate_dataset(ds, check_images=False)
    assert quick["missing"] == ["missing.png"] and quick["unreadable"] == []


def test_validate_warns_about_scale(tmp_path):
    ds = ComplexityDataset(name="s", root=tmp_path, paths=np.array(["a", "b"]), scores=np.array([50.0, 120.0]),
                           categories=np.array(["x", "x"]), groups=np.array([]), per_category_scale=True,
                           score_scale=(0.0, 100.0))
    report = validate_dataset(ds, check_images=False)
    warnings = " | ".join(report["warnings"])
    assert "per-category scale" in warnings and "1 score(s) outside" in warnings and "fewer than 10" in warnings


# ---------------------------------------------------------------------------------------------- real SAVOIAS


@pytest.mark.savoias
@needs_savoias
def test_real_savoias_compact_copy():
    ds = load_dataset("savoias", root=SAVOIAS)
    assert len(ds) == 1416
    assert dict(Counter(ds.categories.tolist())) == SAVOIAS_COUNTS
    groups = Counter(g for g in ds.groups.tolist() if g)
    assert len(groups) == 10 and set(groups.values()) == {2}
    for g in groups:
        assert set(ds.categories[ds.groups == g].tolist()) == {"art", "suprematism"}
    assert ds.scores.min() == 0 and ds.scores.max() == 100 and np.isfinite(ds.scores).all()
    for c in SAVOIAS_COUNTS:  # every category spans the whole 0..100 scale on its own
        assert ds.scores[ds.categories == c].min() == 0 and ds.scores[ds.categories == c].max() == 100
    assert ds.per_category_scale and ds.score_scale == (0, 100)
    assert load_dataset(SAVOIAS).paths.tolist() == ds.paths.tolist()


@pytest.mark.savoias
@needs_savoias
def test_real_savoias_validates_clean():
    report = validate_dataset(load_savoias(SAVOIAS), num_threads=8)
    assert report["missing"] == [] and report["unreadable"] == [] and report["duplicate_paths"] == []
    assert report["groups"]["cross_category_groups"] == 10
