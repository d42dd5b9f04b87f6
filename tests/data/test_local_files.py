"""Local files and folders as calibration sources: every format, and every error names the place."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from auto_round_mllm.data.sources import load_samples
from auto_round_mllm.errors import DatasetError


def png(path, colour=(255, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def llava_item(image, question="What is this?", answer="A red square."):
    return {
        "id": image,
        "image": image,
        "conversations": [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": answer},
        ],
    }


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_txt_paragraphs(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first paragraph\nsame one\n\n\nsecond\n")
    result = load_samples(str(path))
    assert result.label == str(path)
    assert [s.text for s in result.samples] == ["first paragraph\nsame one", "second"]


def test_jsonl_text_messages_and_llava_lines(tmp_path):
    png(tmp_path / "pics" / "a.png")
    png(tmp_path / "pics" / "b.png")
    path = write_jsonl(
        tmp_path / "mix.jsonl",
        [
            {"text": "plain"},
            {"text": "  "},  # blank texts are skipped, as blank lines are
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "<image>\nCompare with <image>."},
                    {"role": "assistant", "content": "Both are red."},
                ],
                "images": ["pics/a.png", "pics/b.png"],
            },
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
                ],
                "images": ["pics/a.png"],
            },
            llava_item("pics/b.png"),
        ],
    )
    samples = load_samples(str(path)).samples
    assert samples[0].text == "plain" and not samples[0].is_multimodal
    assert [m["role"] for m in samples[1].messages] == ["system", "user", "assistant"]
    assert samples[1].images == [tmp_path / "pics" / "a.png", tmp_path / "pics" / "b.png"]
    assert samples[2].messages[0]["content"] == "<image>\nColour?"
    assert samples[2].messages[1] == {"role": "assistant", "content": "Red."}
    assert samples[3].messages == [
        {"role": "user", "content": "<image>\nWhat is this?"},
        {"role": "assistant", "content": "A red square."},
    ]
    assert all(s.source == str(path) for s in samples)


def test_llava_json_with_images_beside_it_and_in_extra_data_dir(tmp_path):
    data = tmp_path / "data"
    png(data / "images" / "000001.jpg")
    item = llava_item("images/000001.jpg")
    item["conversations"][0]["value"] = "What is this?"  # no placeholder: LLaVA's rule puts it first
    path = data / "llava.json"
    path.write_text(json.dumps([item, {**llava_item("coco/train2017/000001.jpg"), "id": 2}]))
    coco = tmp_path / "coco"
    png(coco / "000001.jpg")

    own = load_samples(str(path), max_missing_images=0.5)  # the second name is not under data/
    assert own.missing_images == 1 and len(own.samples) == 1
    assert own.samples[0].messages[0]["content"] == "<image>\nWhat is this?"
    assert own.samples[0].images == [data / "images" / "000001.jpg"]

    for extra in (str(coco), f"image={coco}", f"image={coco},video={tmp_path},audio={tmp_path}"):
        result = load_samples(str(path), extra_data_dir=extra)  # basenames found in a flat COCO folder
        assert result.missing_images == 0
        assert [s.images for s in result.samples] == [[coco / "000001.jpg"]] * 2


def test_text_only_llava_item(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(
        json.dumps([{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}])
    )
    (sample,) = load_samples(str(path)).samples
    assert sample.images == [] and sample.messages[1] == {"role": "assistant", "content": "Hello"}


def test_parquet_text_and_conversations(tmp_path):
    text = tmp_path / "text.parquet"
    pq.write_table(pa.table({"text": ["one", "two", ""], "meta": [1, 2, 3]}), text)
    assert [s.text for s in load_samples(str(text)).samples] == ["one", "two"]

    png(tmp_path / "img" / "x.png")
    chats = tmp_path / "chats.parquet"
    messages = [[{"role": "user", "content": "<image>\nWhat?"}, {"role": "assistant", "content": "Red."}]]
    pq.write_table(pa.table({"messages": messages, "images": [["img/x.png"]]}), chats)
    (sample,) = load_samples(str(chats)).samples
    assert sample.images == [tmp_path / "img" / "x.png"] and sample.messages[1]["content"] == "Red."


def test_parquet_errors(tmp_path):
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"body": ["x"]}), wrong)
    with pytest.raises(DatasetError, match=r"columns \['body'\] but none of 'text', 'messages'"):
        load_samples(str(wrong))
    blobs = tmp_path / "blobs.parquet"
    images = pa.array([[{"bytes": b"\x89PNG", "path": "x.png"}]])
    pq.write_table(
        pa.table({"messages": [[{"role": "user", "content": "<image>"}]], "images": images}), blobs
    )
    with pytest.raises(DatasetError, match="column 'images' holds image bytes"):
        load_samples(str(blobs))
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(DatasetError, match="is not a readable parquet file"):
        load_samples(str(broken))
    bad_row = tmp_path / "bad_row.parquet"
    pq.write_table(pa.table({"text": ["ok", None]}), bad_row)
    with pytest.raises(DatasetError, match="row 1 has no string field 'text'"):
        load_samples(str(bad_row))


def test_image_folder_with_same_stem_captions(tmp_path):
    png(tmp_path / "b.png")
    png(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("A red tile.\n")
    (tmp_path / "b.txt").write_text("Another red tile.")
    samples = load_samples(str(tmp_path)).samples
    assert [s.images for s in samples] == [[tmp_path / "a.jpg"], [tmp_path / "b.png"]]
    assert samples[0].messages == [
        {"role": "user", "content": "<image>\nDescribe the image."},
        {"role": "assistant", "content": "A red tile."},
    ]


def test_image_folder_errors_and_missing_images(tmp_path):
    png(tmp_path / "a.png")
    with pytest.raises(DatasetError, match=r"1 image\(s\) have no caption file, e.g. a.png"):
        load_samples(str(tmp_path))
    (tmp_path / "a.txt").write_text("  ")
    with pytest.raises(DatasetError, match=r"caption file .*a.txt is empty"):
        load_samples(str(tmp_path))
    (tmp_path / "a.txt").write_text("a tile")
    for stem in "bcdefghijk":  # ten captions whose image is absent, one present
        (tmp_path / f"{stem}.txt").write_text("lost")
    with pytest.raises(DatasetError, match=r"10 of 11 images \(91%\) are missing, more than the 10% allowed"):
        load_samples(str(tmp_path))
    result = load_samples(str(tmp_path), max_missing_images=1.0)
    assert len(result.samples) == 1 and result.missing_images == 10
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DatasetError, match="holds no images with captions"):
        load_samples(str(tmp_path / "empty_dir"))


def test_image_folder_with_metadata_jsonl(tmp_path):
    png(tmp_path / "pics" / "one.png")
    png(tmp_path / "pics" / "two.png")
    write_jsonl(
        tmp_path / "pics" / "metadata.jsonl",
        [{"file_name": "one.png", "text": "first"}, {"file_name": "two.png", "text": "second"}],
    )
    result = load_samples(str(tmp_path / "pics"))
    assert [s.messages[1]["content"] for s in result.samples] == ["first", "second"]
    write_jsonl(tmp_path / "pics" / "metadata.jsonl", [{"file_name": "one.png"}])
    with pytest.raises(DatasetError, match=r"metadata.jsonl: line 1 has no caption in 'text'"):
        load_samples(str(tmp_path / "pics"))
    write_jsonl(tmp_path / "pics" / "metadata.jsonl", [{"file_name": "../one.png", "text": "x"}])
    with pytest.raises(DatasetError, match="leaves the image folder"):
        load_samples(str(tmp_path / "pics"))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("none.jsonl", None, "dataset file .*none.jsonl does not exist"),
        ("empty.jsonl", "", "holds no text or conversations"),
        ("empty.txt", "\n\n", "holds no text or conversations"),
        ("empty.json", "[]", "holds no text or conversations"),
        ("bad.jsonl", '{"text": "ok"}\n{"text": \n', r"line 2 is not valid JSON"),
        (
            "fields.jsonl",
            '{"body": "x"}\n',
            r"line 1 has no string field 'text' and no list field 'messages'",
        ),
        ("bad.json", "[1,", r"bad.json is not valid JSON \(line 1"),
        ("dict.json", '{"a": 1}', "holds a JSON dict, not a list of records"),
        ("item.json", '[{"text": "ok"}, 3]', r"item.json: item 1 has no string field 'text'"),
        ("role.jsonl", '{"messages": [{"role": "robot", "content": "x"}]}\n', "turn 0 has role 'robot'"),
        ("turn.jsonl", '{"messages": [{"content": "x"}]}\n', "message 0 needs 'role' and 'content'"),
        ("empty_chat.jsonl", '{"messages": []}\n', "line 1 has an empty conversation"),
        (
            "llava_turn.json",
            '[{"conversations": [{"from": "human"}]}]',
            "turn 0 needs 'from' and a string 'value'",
        ),
        (
            "count.jsonl",
            '{"messages": [{"role": "user", "content": "<image><image>"}], "images": ["a.png"]}\n',
            r"line 1 has 1 image\(s\) but 2 <image> placeholder\(s\)",
        ),
        ("data.csv", "a,b\n", "unsupported type '.csv'"),
    ],
)
def test_file_errors_name_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=message) as error:
        load_samples(str(path))
    assert "\n" not in str(error.value) and error.value.fix  # one line, with the fix


@pytest.mark.parametrize("name", ["../outside.png", "sub/../../outside.png", "/etc/hostname"])
def test_image_paths_cannot_leave_the_image_folder(tmp_path, name):
    data = tmp_path / "data"
    data.mkdir()
    png(tmp_path / "outside.png")
    path = data / "chat.json"
    path.write_text(json.dumps([llava_item(name)]))
    with pytest.raises(DatasetError, match=r"item 0: image path .* leaves the image folder"):
        load_samples(str(path))
    with pytest.raises(DatasetError, match="leaves the image folder"):
        load_samples(str(path), extra_data_dir=str(data))


def test_absolute_path_inside_the_folder_is_fine(tmp_path):
    image = png(tmp_path / "a.png")
    path = tmp_path / "chat.json"
    path.write_text(json.dumps([llava_item(str(image))]))
    assert load_samples(str(path)).samples[0].images == [image]
