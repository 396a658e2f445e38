"""LLaMA-Factory datasets: names in a dataset dir's `dataset_info.json` read as LLaMA-Factory reads them (its
data/README.md and src/llamafactory/data/parser.py, converter.py, loader.py), checked on small copies of its demo
data layout (mllm_demo.json, mllm_video_demo.json, glaive_toolcall_en_demo.json, alpaca_en_demo.json) and through
`vlft data check`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlft.cli.main import main
from vlft.data.formats import to_sample
from vlft.data.llamafactory import DEFAULT_COLUMNS, DEFAULT_TAGS, convert_row, hub_source, parse_entry
from vlft.data.loader import load_dataset_rows
from vlft.data.sample import Message
from vlft.errors import DataError, VlftError

# The entries of LLaMA-Factory's data/dataset_info.json for its demo sets (hiyouga/LLaMA-Factory, main, 2026-08).
MLLM_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
INFO = {
    "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                  "columns": {"messages": "messages", "images": "images"}, "tags": MLLM_TAGS},
    "mllm_video_demo": {"file_name": "mllm_video_demo.json", "formatting": "sharegpt",
                        "columns": {"messages": "messages", "videos": "videos"}, "tags": MLLM_TAGS},
    "glaive_toolcall_en_demo": {"file_name": "glaive_toolcall_en_demo.json", "formatting": "sharegpt",
                                "columns": {"messages": "conversations", "tools": "tools"}},
    "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
    "alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en", "ms_hub_url": "llamafactory/alpaca_en"},
    "llava_1k_en": {"hf_hub_url": "BUAADreamer/llava-en-zh-2k", "subset": "en", "formatting": "sharegpt",
                    "columns": {"messages": "messages", "images": "images"}, "tags": MLLM_TAGS},
}
LOCAL = ["mllm_demo", "mllm_video_demo", "glaive_toolcall_en_demo", "alpaca_en_demo"]
WEATHER = {"name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def turn(role, content):
    return {"role": role, "content": content}


def said(role, content, tool_calls=None):
    return Message(role, content, tool_calls=tool_calls)


MLLM_ROWS = [
    {"messages": [turn("user", "<image>Who are they?"), turn("assistant", "Two players."),
                  turn("user", "What are they doing?<image>"), turn("assistant", "Celebrating.")],
     "images": ["mllm_demo_data/1.jpg", "mllm_demo_data/1.jpg"]},
    {"messages": [turn("user", "<image>Who is he?"), turn("assistant", "A player."),
                  turn("user", "Why is he on the ground?"), turn("assistant", "He slid on his knees.")],
     "images": ["mllm_demo_data/2.jpg"]},
]
VIDEO_ROWS = [{"messages": [turn("user", "<video>Why is this video funny?"), turn("assistant", "A bar moves.")],
               "videos": ["mllm_demo_data/1.mp4"]}]
GLAIVE_ROWS = [{"conversations": [
    {"from": "human", "value": "Weather in Paris?"},
    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
    {"from": "observation", "value": json.dumps({"temperature": 21})},
    {"from": "gpt", "value": "21 degrees."}], "tools": json.dumps([WEATHER])}]
ALPACA_ROWS = [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
               {"instruction": "Translate.", "input": "Bonjour", "output": "Hello."}]


@pytest.fixture
def data_dir(tmp_path, media_dir) -> Path:
    """A LLaMA-Factory `data/` dir laid out as its demo data: dataset_info.json, the demo files, mllm_demo_data/."""
    d = tmp_path / "data"
    (d / "mllm_demo_data").mkdir(parents=True)
    shutil.copy(media_dir / "c.jpg", d / "mllm_demo_data" / "1.jpg")
    shutil.copy(media_dir / "c.jpg", d / "mllm_demo_data" / "2.jpg")
    shutil.copy(media_dir / "v.mp4", d / "mllm_demo_data" / "1.mp4")
    (d / "dataset_info.json").write_text(json.dumps(INFO, indent=2))
    for name, rows in [("mllm_demo", MLLM_ROWS), ("mllm_video_demo", VIDEO_ROWS),
                       ("glaive_toolcall_en_demo", GLAIVE_ROWS), ("alpaca_en_demo", ALPACA_ROWS)]:
        (d / f"{name}.json").write_text(json.dumps(rows, indent=2))
    return d


def load(spec, dataset_dir=None, **kwargs):
    return load_dataset_rows(spec, seed=0, use_hf=kwargs.pop("use_hf", False),
                             cache_root=kwargs.pop("cache_root", Path("/nonexistent")), dataset_dir=dataset_dir)


def sample_of(row, entry_name="mllm_demo", info=INFO):
    return to_sample(convert_row(row, parse_entry(entry_name, info[entry_name])))


# ---------------------------------------------------------------------------------------------------
# entries: DatasetAttr's defaults and join


def test_entry_defaults_are_llamafactorys():
    entry = parse_entry("alpaca_en_demo", INFO["alpaca_en_demo"])
    assert entry.formatting == "alpaca" and entry.split == "train"
    assert entry.columns == {"prompt": "instruction", "query": "input", "response": "output",
                             "messages": "conversations"} == DEFAULT_COLUMNS
    assert entry.tags == {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                          "observation_tag": "observation", "function_tag": "function_call",
                          "system_tag": "system"} == DEFAULT_TAGS


def test_columns_given_leave_the_unlisted_ones_unset():
    # DatasetAttr.join sets every column from "columns" (None where absent): `input` is no longer read.
    info = {"qa": {"file_name": "qa.json", "columns": {"prompt": "instruction", "response": "output"}}}
    sample = sample_of({"instruction": "Name a colour.", "input": "ignored", "output": "Blue."}, "qa", info)
    assert sample.messages == [said("user", "Name a colour."), said("assistant", "Blue.")]


def test_tags_given_leave_the_unlisted_ones_unset():
    # mllm_demo's tags name no system_tag: a system turn is out of its roles (LLaMA-Factory skips the row).
    row = {"messages": [turn("system", "Be brief."), turn("user", "hi"), turn("assistant", "yo")]}
    with pytest.raises(DataError) as info:
        sample_of(row)
    assert info.value.field == "messages[0].role"
    assert "unknown role 'system'" in info.value.problem and "'user', 'assistant'" in info.value.problem


@pytest.mark.parametrize("attr, message", [
    ({"file_name": "x.json", "formatting": "openai"}, "formatting 'openai' is not supported"),
    ({"file_name": "x.json", "ranking": True}, "preference"),
    ({"file_name": "x.json", "formatting": "sharegpt", "columns": {"messages": "m", "kto_tag": "label"}},
     "preference"),
    ({"file_name": "x.json", "formatting": "sharegpt", "columns": {"messages": "m", "audios": "audios"}}, "audio"),
    ({"script_url": "my_script"}, "script_url is not supported"),
    ({"om_hub_url": "HaM/alpaca_en"}, "om_hub_url is not supported"),
    ({"formatting": "sharegpt"}, "no file_name, hf_hub_url or ms_hub_url"),
    ({"file_name": "x.json", "num_samples": "5"}, "num_samples: expected a positive integer"),
    ({"file_name": "x.json", "columns": ["messages"]}, "columns: expected an object"),
])
def test_entries_vlft_cannot_train_on_are_refused(attr, message):
    with pytest.raises(VlftError, match=message):
        parse_entry("x", attr)


# ---------------------------------------------------------------------------------------------------
# rows: SharegptDatasetConverter and AlpacaDatasetConverter


def test_mllm_demo_row():
    sample = sample_of(MLLM_ROWS[0])
    assert sample.messages == [said("user", "<image>Who are they?"), said("assistant", "Two players."),
                               said("user", "What are they doing?<image>"), said("assistant", "Celebrating.")]
    assert sample.images == ["mllm_demo_data/1.jpg", "mllm_demo_data/1.jpg"]


def test_function_call_and_observation_are_tool_call_and_tool():
    sample = sample_of(GLAIVE_ROWS[0], "glaive_toolcall_en_demo")
    assert sample.messages == [said("user", "Weather in Paris?"),
                               said("assistant", "", [{"name": "get_weather", "arguments": {"city": "Paris"}}]),
                               said("tool", '{"temperature": 21}'), said("assistant", "21 degrees.")]
    assert sample.tools == [{"type": "function", "function": WEATHER}]


def test_parallel_function_calls_and_custom_tags():
    # LLaMA-Factory's FunctionFormatter reads a JSON list as parallel calls; here the tags rename every role.
    info = {"calls": {"file_name": "c.json", "formatting": "sharegpt", "columns": {"messages": "msgs"},
                      "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot",
                               "observation_tag": "result", "function_tag": "call", "system_tag": "rules"}}}
    calls = [{"name": "get_weather", "arguments": {"city": "Paris"}},
             {"name": "get_weather", "arguments": {"city": "Rome"}}]
    row = {"msgs": [{"speaker": "rules", "text": "Use tools."}, {"speaker": "me", "text": "Paris and Rome?"},
                    {"speaker": "call", "text": json.dumps(calls)}, {"speaker": "result", "text": "21, 25"},
                    {"speaker": "bot", "text": "21 and 25."}]}
    assert sample_of(row, "calls", info).messages == [
        said("system", "Use tools."), said("user", "Paris and Rome?"), said("assistant", "", calls),
        said("tool", "21, 25"), said("assistant", "21 and 25.")]


def test_system_turn_wins_over_the_system_column():
    info = {"s": {"file_name": "s.json", "formatting": "sharegpt", "columns": {"messages": "conversations",
                                                                              "system": "system"}}}
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "system": "Column."}
    assert sample_of(row, "s", info).messages[0] == said("system", "Column.")
    row["conversations"].insert(0, {"from": "system", "value": "Turn."})
    assert [m.content for m in sample_of(row, "s", info).messages] == ["Turn.", "hi", "yo"]
    # Without a system column in the entry, the row's `system` is not read.
    assert sample_of({**row, "conversations": row["conversations"][1:]}, "glaive_toolcall_en_demo").messages == [
        said("user", "hi"), said("assistant", "yo")]


@pytest.mark.parametrize("turns, field, problem", [
    ([turn("user", "a"), turn("user", "b")], "messages[1].role", "'user' where LLaMA-Factory expects 'assistant'"),
    ([turn("assistant", "a"), turn("user", "b")], "messages[0].role", "expects 'user'"),
    ([turn("user", "a"), turn("assistant", "b"), turn("user", "c")], "messages", "the last turn is not an answer"),
    ([turn("user", "a"), turn("robot", "b")], "messages[1].role", "unknown role 'robot'"),
    ([], "messages", "non-empty list"),
])
def test_rows_llamafactory_skips_are_errors_at_their_field(turns, field, problem):
    with pytest.raises(DataError) as info:
        sample_of({"messages": turns})
    assert info.value.field == field and problem in info.value.problem


def test_alpaca_rows_with_history_system_and_images():
    info = {"a": {"file_name": "a.json", "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                                      "history": "history", "system": "system", "images": "images"}}}
    row = {"instruction": "<image>Describe.", "input": "Briefly.", "output": "A cat.", "system": "Be kind.",
           "history": [["Hi", "Hello."]], "images": "cat.png"}
    sample = sample_of(row, "a", info)
    assert sample.messages == [said("system", "Be kind."), said("user", "Hi"), said("assistant", "Hello."),
                               said("user", "<image>Describe.\nBriefly."), said("assistant", "A cat.")]
    assert sample.images == ["cat.png"]
    assert sample_of(ALPACA_ROWS[0], "alpaca_en_demo").messages == [said("user", "Name a colour."),
                                                                    said("assistant", "Blue.")]
    with pytest.raises(DataError) as error:
        sample_of({"instruction": "x"}, "alpaca_en_demo")  # no answer: LLaMA-Factory drops it as unsupervised
    assert error.value.field == "output"


# ---------------------------------------------------------------------------------------------------
# loading: --dataset NAME --dataset_dir DIR, DIR:NAME, DIR


def test_name_in_dataset_dir(data_dir):
    rows = load("mllm_demo", data_dir)
    assert [(r.source, r.line, r.error) for r in rows] == [(str(data_dir / "mllm_demo.json"), 1, None),
                                                           (str(data_dir / "mllm_demo.json"), 2, None)]
    assert rows[0].base_dir == data_dir.resolve()  # media_dir defaults to dataset_dir
    assert [r.row for r in load(f"{data_dir}:mllm_demo")] == [r.row for r in rows]
    assert len(load("mllm_demo#5", data_dir)) == 5


def test_media_paths_are_relative_to_the_dataset_dir_not_the_file(data_dir, tmp_path, monkeypatch):
    (data_dir / "sub").mkdir()
    (data_dir / "sub" / "demo.json").write_text(json.dumps(MLLM_ROWS[1:]))
    elsewhere = tmp_path / "cwd"
    (elsewhere / "pics").mkdir(parents=True)
    shutil.copy(data_dir / "mllm_demo_data" / "1.jpg", elsewhere / "pics" / "x.jpg")
    row = {**MLLM_ROWS[1], "images": ["pics/x.jpg"]}
    (data_dir / "sub" / "cwd.json").write_text(json.dumps([row]))
    info = {**INFO, "sub": {**INFO["mllm_demo"], "file_name": "sub/demo.json"},
            "cwd": {**INFO["mllm_demo"], "file_name": "sub/cwd.json"}}
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    [raw] = load("sub", data_dir)
    assert raw.base_dir == data_dir.resolve() and raw.row["images"] == ["mllm_demo_data/2.jpg"]
    # Not in the media dir: used as given, i.e. from the working dir (converter.py `_find_medias`).
    monkeypatch.chdir(elsewhere)
    assert load("cwd", data_dir)[0].row["images"] == [str(elsewhere / "pics" / "x.jpg")]


def test_a_dataset_dir_given_as_dataset_reads_its_local_datasets(data_dir):
    rows = load(str(data_dir))
    files = [Path(r.source).stem for r in rows]
    assert files == ["mllm_demo"] * 2 + ["mllm_video_demo", "glaive_toolcall_en_demo"] + ["alpaca_en_demo"] * 2
    assert all(r.error is None for r in rows)


def test_a_dataset_dir_with_an_unusable_local_dataset_says_how_to_name_others(data_dir):
    info = {**INFO, "dpo_en_demo": {"file_name": "dpo_en_demo.json", "ranking": True}}
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(VlftError) as error:
        load(str(data_dir))
    assert "dpo_en_demo" in str(error.value) and "preference" in str(error.value)
    assert f"--dataset_dir {data_dir}" in str(error.value) and "mllm_demo, mllm_video_demo" in str(error.value)


@pytest.mark.parametrize("spec, use_dir", [("mllm_dmeo", True), ("{d}:mllm_dmeo", False)])
def test_unknown_names_list_the_defined_ones(data_dir, spec, use_dir):
    with pytest.raises(VlftError) as error:
        load(spec.format(d=data_dir), data_dir if use_dir else None)
    assert "mllm_dmeo: not defined in" in str(error.value)
    assert ", ".join(INFO) in str(error.value)


def test_dataset_dir_errors(data_dir, tmp_path):
    with pytest.raises(VlftError, match="no dataset_info.json in it"):
        load("mllm_demo", tmp_path)
    with pytest.raises(VlftError, match="takes no :SUBSET"):
        load("mllm_demo:en", data_dir)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset_info.json").write_text("{")
    with pytest.raises(VlftError, match="not valid JSON"):
        load("x", tmp_path / "bad")


def test_files_and_hub_ids_still_load_beside_a_dataset_dir(data_dir, tmp_path):
    (tmp_path / "mine.jsonl").write_text(json.dumps({"query": "q", "response": "r"}) + "\n")
    assert [r.row for r in load(str(tmp_path / "mine.jsonl"), data_dir)] == [{"query": "q", "response": "r"}]


# ---------------------------------------------------------------------------------------------------
# hub entries: get_dataset_list's hub choice, downloaded by vlft's hub path (offline here)


@pytest.mark.parametrize("attr, use_hf, expected", [
    ({"hf_hub_url": "h/x", "ms_hub_url": "m/x"}, False, ("m/x", False)),
    ({"hf_hub_url": "h/x", "ms_hub_url": "m/x"}, True, ("h/x", True)),
    ({"hf_hub_url": "h/x"}, False, ("h/x", True)),
    ({"ms_hub_url": "m/x"}, True, ("m/x", False)),
    ({"hf_hub_url": "h/x", "file_name": "x.json"}, False, ("h/x", True)),  # a hub id wins over file_name
    ({"file_name": "x.json"}, True, None),
])
def test_hub_choice(attr, use_hf, expected):
    assert hub_source(parse_entry("x", attr), use_hf) == expected


def test_hub_entry_downloads_its_subset_and_converts_rows(data_dir, monkeypatch, tmp_path):
    import datasets

    calls = []

    def fake_load(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, kwargs))
        return [MLLM_ROWS[1]]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    [raw] = load("llava_1k_en", data_dir, use_hf=True, cache_root=tmp_path)
    assert calls == [("BUAADreamer/llava-en-zh-2k", "en", "train", {})]
    assert (raw.source, raw.line, raw.base_dir) == ("llava_1k_en", 1, None)
    assert raw.row == {"messages": MLLM_ROWS[1]["messages"], "images": ["mllm_demo_data/2.jpg"]}


def test_hub_entry_offline_names_the_dataset_and_hub(data_dir, monkeypatch, tmp_path):
    import modelscope

    def offline(*args, **kwargs):
        raise ConnectionError("Network is unreachable")

    monkeypatch.setattr(modelscope, "dataset_snapshot_download", offline)
    with pytest.raises(VlftError) as error:
        load("alpaca_en", data_dir, cache_root=tmp_path)
    assert str(error.value).startswith("--dataset alpaca_en: downloading llamafactory/alpaca_en from ModelScope "
                                       "failed: ConnectionError")


# ---------------------------------------------------------------------------------------------------
# the command line


def test_data_check_with_dataset_dir(data_dir, vlft_cache, capsys):
    argv = ["data", "check", "--model", "vlft/tiny-qwen3-vl", "--dataset_dir", str(data_dir), "--dataset"]
    assert main([*argv, "mllm_demo", "mllm_video_demo", "alpaca_en_demo"]) == 0
    assert "lines: 5 (5 ok, 0 bad" in capsys.readouterr().out
    assert main([*argv, "mllm_dmeo"]) == 2
    assert "mllm_dmeo: not defined in" in capsys.readouterr().err


def test_data_check_of_a_dataset_dir_and_dir_name(data_dir, vlft_cache, capsys):
    argv = ["data", "check", "--model", "vlft/tiny-qwen3-vl", "--dataset"]
    assert main([*argv, f"{data_dir}:mllm_demo", f"{data_dir}:mllm_video_demo"]) == 0
    assert "lines: 3 (3 ok, 0 bad" in capsys.readouterr().out
    # Qwen3-VL's template refuses tools, so the whole dir (glaive's tool-call demo included) is checked on Qwen3.5.
    assert main(["data", "check", "--model", "vlft/tiny-qwen3.5", "--dataset", str(data_dir)]) == 0
    assert "lines: 6 (6 ok, 0 bad" in capsys.readouterr().out
