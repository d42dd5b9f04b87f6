import pytest
import torch

from auto_round_mllm.data.calib_set import build_calibration_set
from auto_round_mllm.data.processors import TextProcessor
from auto_round_mllm.data.sample import Sample, SourceSamples
from auto_round_mllm.data.sources import load_samples
from auto_round_mllm.errors import DatasetError, UnknownName


def load_texts(spec):
    """(label, texts) of a text source."""
    result = load_samples(spec)
    return result.label, [sample.text for sample in result.samples if sample.text is not None]


def build_text_calibration(texts, tokenizer, *, source, seqlen, nsamples, seed):
    samples = SourceSamples(label=source, samples=[Sample(text=t) for t in texts])
    processor = TextProcessor(tokenizer=tokenizer)
    return build_calibration_set(samples, processor, seqlen=seqlen, nsamples=nsamples, seed=seed)


class CharTokenizer:
    """One token per character; eos 0. Enough to check sample building exactly."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 250 + 1 for c in text]}


def test_embedded_set_is_default_and_offline():
    label, texts = load_texts("embedded-text")
    assert label == "embedded-text" and len(texts) == 79
    assert load_texts("embedded")[1] == texts


def test_local_jsonl_and_txt(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "alpha"}\n\n{"text": "beta", "extra": 1}\n{"text": "   "}\n')
    assert load_texts(str(jsonl)) == (str(jsonl), ["alpha", "beta"])
    assert load_texts(f"local:{jsonl}")[1] == ["alpha", "beta"]
    txt = tmp_path / "c.txt"
    txt.write_text("first paragraph\nsame one\n\nsecond\n")
    assert load_texts(str(txt))[1] == ["first paragraph\nsame one", "second"]


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("", ".jsonl", "holds no text"),
        ('{"text": 1}\n', ".jsonl", "line 1 has no string field 'text'"),
        ("[1, 2]\n", ".jsonl", "line 1 has no string field 'text'"),
        ("a,b\n", ".csv", "unsupported type '.csv'"),
    ],
)
def test_bad_local_files(tmp_path, content, suffix, message):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_texts(str(path))


def test_unknown_names_and_hub_datasets():
    with pytest.raises(UnknownName, match="embedded"):
        load_texts("pile")
    with pytest.raises(DatasetError, match="hub dataset"):
        load_texts("NeelNanda/pile-10k")


def test_samples_are_full_length_joined_with_eos_and_seeded():
    texts = ["a" * 30, "b" * 5, "c" * 40, "d" * 12]
    calib = build_text_calibration(texts, CharTokenizer(), source="t", seqlen=16, nsamples=3, seed=1)
    assert calib.used == 3 and calib.tokens == 48 and not calib.notes
    for sample in calib.samples:
        assert sample["input_ids"].shape == (1, 16) and sample["attention_mask"].eq(1).all()
    stream = torch.cat([s["input_ids"][0] for s in calib.samples])
    assert (stream == 0).any()  # documents are separated by eos, short ones are kept
    again = build_text_calibration(texts, CharTokenizer(), source="t", seqlen=16, nsamples=3, seed=1)
    assert all(
        torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(calib.samples, again.samples, strict=True)
    )
    other = build_text_calibration(texts, CharTokenizer(), source="t", seqlen=16, nsamples=3, seed=2)
    assert not all(
        torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(calib.samples, other.samples, strict=True)
    )


def test_small_corpus_gives_fewer_samples_and_says_so():
    calib = build_text_calibration(
        ["x" * 50], CharTokenizer(), source="small", seqlen=16, nsamples=10, seed=0
    )
    assert calib.used == 3 and calib.requested == 10
    assert "gave 3 samples of up to 16 tokens instead of 10" in calib.notes[0]
    tiny = build_text_calibration(["xyz"], CharTokenizer(), source="tiny", seqlen=16, nsamples=2, seed=0)
    assert tiny.used == 1 and tiny.seqlen == 4 and "only 4 tokens" in tiny.notes[0]
