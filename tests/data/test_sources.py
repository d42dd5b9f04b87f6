"""Named sources, ``--dataset`` lists, the embedded set, pile-10k from a real offline cache, LLaVA."""

import json
import shutil
import socket
import time

import make_calibration_images
import pytest
from PIL import Image

from auto_round_mllm.data import sources
from auto_round_mllm.data.sample import Sample, SourceSamples
from auto_round_mllm.data.sources import (
    DATASETS,
    default_dataset_for,
    load_samples,
    parse_dataset_spec,
    register_dataset,
)
from auto_round_mllm.errors import DatasetError, UnknownName
from auto_round_mllm.utils.assets import asset_dir

LLAVA_REPO_DIR = "datasets--liuhaotian--LLaVA-Instruct-150K"


@pytest.fixture
def no_network(monkeypatch):
    """Connection attempts fail and are recorded (a library may swallow the error): offline paths
    must not even try, which each test using this checks at teardown."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network use in a test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert not attempts, f"tried the network: {attempts}"


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    import datasets

    cache = tmp_path / "hf-datasets"
    cache.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hf-hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_pile(cache, texts):
    """Prepare a dataset the way ``load_dataset`` does after a download (arrow + dataset_info.json,
    by the packaged json builder), under the directory name the hub id maps to."""
    from datasets.packaged_modules.json.json import Json

    source = cache.parent / "pile-train.jsonl"
    source.write_text(
        "".join(json.dumps({"text": text, "meta": {"n": i}}) + "\n" for i, text in enumerate(texts))
    )
    builder = Json(
        cache_dir=str(cache.parent / "build"),
        dataset_name="pile-10k",
        config_name="default",
        config_id="default",
        data_files={"train": [str(source)]},
        hash="0123456789abcdef",
    )
    builder.download_and_prepare()
    shutil.move(cache.parent / "build" / "pile-10k", cache / "NeelNanda___pile-10k")


def png(path, colour=(0, 0, 255)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def llava_json(n, prefix=""):
    return json.dumps(
        [
            {
                "id": str(i),
                "image": f"{prefix}{i:012d}.jpg",
                "conversations": [
                    {"from": "human", "value": f"<image>\nWhat is in picture {i}?"},
                    {"from": "gpt", "value": f"Picture {i} shows a blue tile."},
                ],
            }
            for i in range(n)
        ]
    )


def coco(folder, ids):
    for i in ids:
        png(folder / f"{i:012d}.jpg")
    return folder


# ---- spec parsing, lists, counts -----------------------------------------------------------------


def test_parse_dataset_spec():
    spec = parse_dataset_spec("embedded:64, ./mine.jsonl:32,local:./x.jsonl,local:./y.jsonl:3,pile-10k")
    assert [(s.name, s.count) for s in spec] == [
        ("embedded", 64),
        ("./mine.jsonl", 32),
        ("local:./x.jsonl", None),
        ("local:./y.jsonl", 3),
        ("pile-10k", None),
    ]
    with pytest.raises(DatasetError, match="asks for 0 samples"):
        parse_dataset_spec("embedded:0")
    with pytest.raises(DatasetError, match="has an empty entry"):
        parse_dataset_spec("embedded,,x.txt")


def test_lists_concatenate_in_order_and_counts_take_the_first_n(tmp_path):
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(5)))
    whole = load_samples(f"embedded-text,{mine}")
    assert len(whole.samples) == 79 + 5 and whole.label == f"embedded-text,{mine}"
    assert [s.text for s in whole.samples[-5:]] == [f"t{i}" for i in range(5)]

    mixed = load_samples(f"embedded:4,{mine}:2,embedded-images:1")
    assert mixed.label == f"embedded:4,{mine}:2,embedded-images:1"
    assert [s.source for s in mixed.samples] == ["embedded"] * 4 + [str(mine)] * 2 + ["embedded-images"]
    assert [s.text for s in mixed.samples[4:6]] == ["t0", "t1"]
    assert [s.is_multimodal for s in mixed.samples[:4]] == [True, False, True, False]  # embedded interleaves
    assert mixed.samples[:4] == load_samples("embedded").samples[:4]
    assert load_samples(f"{mine}:2").samples == load_samples(f"{mine}:2").samples  # deterministic

    short = load_samples(f"{mine}:9")
    assert len(short.samples) == 5 and short.notes == [f"{mine}: asked for 9 samples, it has 5"]


def test_unknown_names_and_missing_paths():
    with pytest.raises(UnknownName, match="did you mean 'embedded'"):
        load_samples("embeded")
    with pytest.raises(DatasetError, match="neither a registered source nor an existing file or folder"):
        load_samples("someone/unknown-set")
    with pytest.raises(DatasetError, match="does not exist"):
        load_samples("local:./no/such/file")
    with pytest.raises(DatasetError, match="max_missing_images is 2"):
        load_samples("embedded", max_missing_images=2)


def test_extra_data_dir_forms_are_checked(tmp_path):
    with pytest.raises(DatasetError, match=r"--extra_data_dir folder .* does not exist"):
        load_samples("embedded-text", extra_data_dir=str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="part 'pictures=x' is not KIND=DIR"):
        load_samples("embedded-text", extra_data_dir="pictures=x")
    with pytest.raises(DatasetError, match="names 'image' twice"):
        load_samples("embedded-text", extra_data_dir=f"image={tmp_path},image={tmp_path}")


def test_user_registered_sources(tmp_path):
    @register_dataset("test-user-texts", aliases=("test-mine",))
    def user_texts():
        """Two texts, registered without a context argument."""
        return ["alpha", "", "beta"]

    @register_dataset("test-user-chats")
    def user_chats(ctx):
        image = png(tmp_path / "u.png")
        return SourceSamples(
            "ignored", [Sample(messages=[{"role": "user", "content": "<image>"}], images=[image])]
        )

    @register_dataset("test-user-broken")
    def broken(ctx):
        return 42

    try:
        assert [s.text for s in load_samples("test-mine").samples] == ["alpha", "beta"]
        assert (
            DATASETS.get("test-user-texts").description == "Two texts, registered without a context argument."
        )
        assert load_samples("test-user-chats").samples[0].source == "ignored"
        with pytest.raises(DatasetError, match="returned int"):
            load_samples("test-user-broken")
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("test-user-texts")(user_texts)
    finally:
        for name in ("test_user_texts", "test_user_chats", "test_user_broken"):
            DATASETS._items.pop(name)
        DATASETS._aliases.pop("test_mine")


# ---- embedded set --------------------------------------------------------------------------------


def test_embedded_set_contents():
    texts = load_samples("embedded-text").samples
    chats = load_samples("embedded-images").samples
    both = load_samples("embedded")
    assert len(texts) == 79 and all(s.text and not s.images for s in texts)
    assert len(chats) == 24 and both.missing_images == 0 and not both.notes
    assert len(both.samples) == 103
    images = asset_dir("calibration") / "images"
    for sample in chats:
        assert len(sample.images) == 1 and sample.images[0].parent == images
        assert sample.messages[0]["role"] == "user" and sample.messages[-1]["role"] == "assistant"
        assert sum(m["content"].count("<image>") for m in sample.messages) == 1
    assert len({s.images[0] for s in chats}) == 24
    assert sorted(p.name for p in images.glob("*.png")) == sorted(s.images[0].name for s in chats)
    assert sum(p.stat().st_size for p in images.glob("*.png")) < 100_000
    assert load_samples(None, hub_available=False).label == "embedded"
    assert [s.text for s in load_samples(None).samples if s.text is not None] == [s.text for s in texts]


def test_embedded_images_ignore_extra_data_dir(tmp_path):
    assert (
        load_samples("embedded-images", extra_data_dir=str(tmp_path)).samples
        == load_samples("embedded-images").samples
    )


def test_generated_calibration_images_are_deterministic(tmp_path):
    written = make_calibration_images.make_calibration_images(tmp_path)
    shipped = asset_dir("calibration")
    assert len(written) == 25
    for path in written:
        original = shipped / path.relative_to(tmp_path)
        assert path.read_bytes() == original.read_bytes(), f"{original} differs: rerun the generator"
    with Image.open(shipped / "images" / "checkerboard.png") as board:
        assert board.size == (224, 224) and board.getpixel((0, 0)) == (0, 0, 0)


# ---- pile-10k ------------------------------------------------------------------------------------


def test_pile_from_a_real_offline_cache(datasets_cache, no_network):
    cache_pile(datasets_cache, ["first doc", "", "second doc", "third doc"])
    result = load_samples("pile-10k", hub_available=False)
    assert result.label == "NeelNanda/pile-10k"
    assert [s.text for s in result.samples] == ["first doc", "second doc", "third doc"]
    assert [s.text for s in load_samples("NeelNanda/pile-10k:2", hub_available=False).samples] == [
        "first doc",
        "second doc",
    ]
    assert default_dataset_for(None, hub_available=False) == "NeelNanda/pile-10k"
    assert [s.text for s in load_samples("pile-10k").samples] == ["first doc", "second doc", "third doc"]


def test_pile_offline_without_the_env_variable(datasets_cache, no_network, monkeypatch):
    """No HF_HUB_OFFLINE, hub unreachable: we switch the libraries offline for the call, and back."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with pytest.raises(
        DatasetError, match=r"not in the datasets cache .* and the hub cannot be reached"
    ) as error:
        load_samples("pile-10k", hub_available=False)
    assert time.monotonic() - start < 5
    assert "--dataset embedded" in str(error.value) and "\n" not in str(error.value)
    assert datasets.config.HF_HUB_OFFLINE is False and huggingface_hub.constants.HF_HUB_OFFLINE is False
    cache_pile(datasets_cache, ["only doc"])
    assert [s.text for s in load_samples("pile-10k", hub_available=False).samples] == ["only doc"]


def test_default_dataset_decision(datasets_cache, hub_cache, tmp_path, no_network):
    assert default_dataset_for(None, hub_available=False) == "embedded"
    assert default_dataset_for(None, hub_available=True) == "NeelNanda/pile-10k"
    assert default_dataset_for("embedded-images", hub_available=False) == "embedded-images"
    assert default_dataset_for("liuhaotian/llava", hub_available=True) == "embedded"  # JSON not local
    (tmp_path / "llava").mkdir()
    (tmp_path / "llava" / "conversation_58k.json").write_text("[]")
    found = default_dataset_for(
        "liuhaotian/llava", extra_data_dir=str(tmp_path / "llava"), hub_available=False
    )
    assert found == "liuhaotian/llava_conv_58k"
    assert default_dataset_for(str(tmp_path / "llava" / "conversation_58k.json")).endswith(".json")
    assert default_dataset_for("./absent/file.jsonl", hub_available=False) == "embedded"
    with pytest.raises(UnknownName):
        default_dataset_for("not-a-source")


def test_hub_check_is_asked_once(monkeypatch, datasets_cache):
    calls = []
    import auto_round_mllm.models.loading as loading

    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: calls.append(1) or False)
    with pytest.raises(DatasetError, match="hub dataset"):
        load_samples("embedded-text:1,pile-10k:1")
    load_samples(None)
    assert len(calls) == 2  # one per load_samples call that needed it


# ---- LLaVA sets ----------------------------------------------------------------------------------


def test_llava_json_and_images_from_extra_data_dir(tmp_path, hub_cache, no_network):
    folder = coco(tmp_path / "llava", range(20))
    (folder / "conversation_58k.json").write_text(llava_json(20))
    result = load_samples("liuhaotian/llava", extra_data_dir=str(folder))
    assert result.label == "liuhaotian/llava_conv_58k" and len(result.samples) == 20
    first = result.samples[0]
    assert first.images == [folder / "000000000000.jpg"]
    assert first.messages == [
        {"role": "user", "content": "<image>\nWhat is in picture 0?"},
        {"role": "assistant", "content": "Picture 0 shows a blue tile."},
    ]
    assert len(load_samples("liuhaotian/llava_conv_58k:5", extra_data_dir=str(folder)).samples) == 5


def test_llava_json_from_the_hub_cache_and_images_in_image_dir(tmp_path, hub_cache, no_network):
    snapshot = hub_cache / LLAVA_REPO_DIR / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    (hub_cache / LLAVA_REPO_DIR / "refs").mkdir()
    (hub_cache / LLAVA_REPO_DIR / "refs" / "main").write_text("c" * 40)
    (snapshot / "llava_instruct_80k.json").write_text(llava_json(10, prefix="coco/train2017/"))
    images = coco(tmp_path / "train2017", range(10))
    result = load_samples("liuhaotian/llava_instruct_80k", extra_data_dir=f"image={images}")
    assert len(result.samples) == 10 and result.samples[3].images == [images / "000000000003.jpg"]

    with pytest.raises(DatasetError, match=r"10 of 10 images \(100%\) are missing") as error:
        load_samples("liuhaotian/llava_instruct_80k")  # no image folder: nothing is downloaded
    assert "COCO train2017" in str(error.value)
    with pytest.raises(DatasetError, match=r"llava_instruct_150k.json .* nor in the Hugging Face cache"):
        load_samples("liuhaotian/llava_instruct_150k", extra_data_dir=str(images))


def test_llava_missing_images_below_and_above_the_threshold(tmp_path, hub_cache):
    folder = tmp_path / "llava"
    folder.mkdir()
    (folder / "conversation_58k.json").write_text(llava_json(20))
    coco(folder, range(18))  # 2 of 20 missing: 10%, allowed by default
    result = load_samples("liuhaotian/llava", extra_data_dir=str(folder))
    assert len(result.samples) == 18 and result.missing_images == 2
    assert result.notes[0].startswith("liuhaotian/llava_conv_58k: 2 of 20 images (10%) were not found")
    assert "000000000018.jpg" in result.notes[0]

    (folder / "000000000017.jpg").unlink()  # 3 of 20: 15%
    with pytest.raises(DatasetError, match=r"3 of 20 images \(15%\) are missing, more than the 10% allowed"):
        load_samples("liuhaotian/llava", extra_data_dir=str(folder))
    assert (
        len(load_samples("liuhaotian/llava", extra_data_dir=str(folder), max_missing_images=0.2).samples)
        == 17
    )
    with pytest.raises(DatasetError, match="are missing"):
        load_samples("liuhaotian/llava", extra_data_dir=str(folder), max_missing_images=0.0)

    # A count stops at N usable samples; only the items looked at are counted.
    counted = load_samples("liuhaotian/llava:5", extra_data_dir=str(folder))
    assert len(counted.samples) == 5 and counted.missing_images == 0


def test_llava_image_paths_cannot_escape(tmp_path, hub_cache):
    folder = tmp_path / "llava"
    folder.mkdir()
    png(tmp_path / "secret.jpg")
    (folder / "conversation_58k.json").write_text(llava_json(1, prefix="../"))
    with pytest.raises(
        DatasetError, match=r"item 0: image path '\.\./000000000000\.jpg' leaves the image folder"
    ):
        load_samples("liuhaotian/llava", extra_data_dir=str(folder))


def test_registry_lists_the_builtin_sources():
    names = DATASETS.names()
    for name in (
        "embedded",
        "embedded_text",
        "embedded_images",
        "neelnanda/pile_10k",
        "liuhaotian/llava_conv_58k",
    ):
        assert name in names
    assert DATASETS.get("liuhaotian/llava").name == "liuhaotian/llava_conv_58k"
    assert DATASETS.get("default").name == "embedded"
    assert all(source.description for _, source in DATASETS.items())
    assert sources.LLAVA_FILES["liuhaotian/llava_instruct_150k"] == "llava_instruct_150k.json"
