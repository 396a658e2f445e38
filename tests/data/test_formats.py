"""Every dataset row format normalised into a `Sample`, compared with hand-written Message lists, and every
kind of bad row rejected with a DataError that names the field at fault."""

from __future__ import annotations

import copy
import json

import pytest

from vlft.data.formats import rename_columns, to_sample
from vlft.data.sample import Message
from vlft.errors import DataError, VlftError


def user(text, loss=None):
    return Message("user", text, loss)


def assistant(text, loss=None):
    return Message("assistant", text, loss)


def system(text):
    return Message("system", text)


# ---------------------------------------------------------------------------------------------------
# messages with string contents


def test_messages_with_string_contents_and_placeholders():
    row = {"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "<image>What is <video> showing?"},
                        {"role": "assistant", "content": "A cat.", "loss": False},
                        {"role": "user", "content": "<image>And here?"},
                        {"role": "assistant", "content": "A dog.", "loss": True}],
           "images": ["a.png", "b.png"], "videos": ["v.mp4"]}
    original = copy.deepcopy(row)
    sample = to_sample(row, source="d.jsonl", line=7)
    assert sample.messages == [system("Be brief."), user("<image>What is <video> showing?"),
                               assistant("A cat.", False), user("<image>And here?"), assistant("A dog.", True)]
    assert sample.images == ["a.png", "b.png"]
    assert sample.videos == ["v.mp4"]
    assert (sample.source, sample.line, sample.objects) == ("d.jsonl", 7, None)
    assert row == original  # the row is not modified


def test_singular_media_columns_and_single_values():
    sample = to_sample({"messages": [{"role": "user", "content": "<image><video>?"},
                                     {"role": "assistant", "content": "ok"}],
                        "image": "a.png", "video": "v.mp4"})
    assert sample.images == ["a.png"]
    assert sample.videos == ["v.mp4"]
    # A single string under the plural name is a one-item list as well; an HF Image dict too.
    sample = to_sample({"messages": [{"role": "user", "content": "<image>?"}, {"role": "assistant", "content": "ok"}],
                        "images": {"bytes": b"png", "path": None}})
    assert sample.images == [{"bytes": b"png", "path": None}]
    assert to_sample({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
                     ).images == []


def test_assistant_with_tool_calls_and_no_content_keeps_the_calls():
    sample = to_sample({"messages": [{"role": "user", "content": "weather?"},
                                     {"role": "assistant", "content": None, "tool_calls": [{"name": "w"}]},
                                     {"role": "tool", "content": "sunny"},
                                     {"role": "assistant", "content": "Sunny."}]})
    assert sample.messages == [user("weather?"), Message("assistant", "", tool_calls=[{"name": "w", "arguments": {}}]),
                               Message("tool", "sunny"), assistant("Sunny.")]


# ---------------------------------------------------------------------------------------------------
# OpenAI / HF content lists


def test_content_list_with_every_part_kind():
    row = {"messages": [
        {"role": "user", "content": [
            {"type": "image", "image": "one.png"},
            {"type": "text", "text": "Compare with "},
            {"type": "image_url", "image_url": "http://host/two.png"},
            {"type": "text", "text": " and "},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "video", "video": "clip.mp4"},
            "plain string part",
        ]},
        {"role": "assistant", "content": [{"type": "text", "text": "They differ."}]},
    ]}
    sample = to_sample(row)
    assert sample.messages == [user("<image>Compare with <image> and <image><video>plain string part"),
                               assistant("They differ.")]
    assert sample.images == ["one.png", "http://host/two.png", "data:image/png;base64,AAAA"]
    assert sample.videos == ["clip.mp4"]


def test_content_parts_without_type_and_video_url():
    row = {"messages": [{"role": "user", "content": [{"image": "x.png"}, {"text": "what?"},
                                                     {"type": "video_url", "video_url": {"url": "v.mp4"}}]},
                        {"role": "assistant", "content": "a"}]}
    sample = to_sample(row)
    assert sample.messages == [user("<image>what?<video>"), assistant("a")]
    assert sample.images == ["x.png"]
    assert sample.videos == ["v.mp4"]


def test_content_list_media_mixed_with_top_level_images_keeps_placeholder_order():
    # Turn 0 has a string placeholder (-> top-level A); turn 2 has a content-list image B first and then a
    # text part with a literal <image> (-> top-level C). Order of placeholders: A, B, C.
    row = {"messages": [{"role": "user", "content": "<image> look"},
                        {"role": "assistant", "content": "ok"},
                        {"role": "user", "content": [{"type": "image", "image": "B"},
                                                     {"type": "text", "text": " and <image>"}]},
                        {"role": "assistant", "content": "done"}],
           "images": ["A", "C"]}
    sample = to_sample(row)
    assert sample.messages == [user("<image> look"), assistant("ok"), user("<image> and <image>"),
                               assistant("done")]
    assert sample.images == ["A", "B", "C"]
    assert row["images"] == ["A", "C"]  # the row's own list is not modified


def test_content_list_media_first_then_top_level_in_a_later_turn():
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "see "},
                                                     {"type": "image", "image": "X"},
                                                     {"type": "video", "video": "VX"}]},
                        {"role": "assistant", "content": "ok"},
                        {"role": "user", "content": "<video><image> more"},
                        {"role": "assistant", "content": "fine"}],
           "images": ["Y"], "videos": ["VY"]}
    sample = to_sample(row)
    assert sample.messages[0] == user("see <image><video>")
    assert sample.images == ["X", "Y"]
    assert sample.videos == ["VX", "VY"]


def test_two_content_list_images_in_one_turn_between_top_level_ones():
    row = {"messages": [{"role": "user", "content": "<image><image>"},
                        {"role": "assistant", "content": "a"},
                        {"role": "user", "content": [{"type": "image", "image": "P"}, {"type": "text", "text": "x"},
                                                     {"type": "image", "image": "Q"}]},
                        {"role": "assistant", "content": "b"},
                        {"role": "user", "content": "<image>"},
                        {"role": "assistant", "content": "c"}],
           "images": ["T1", "T2", "T3"]}
    assert to_sample(row).images == ["T1", "T2", "P", "Q", "T3"]


# ---------------------------------------------------------------------------------------------------
# sharegpt, alpaca, query/response/history, system column, --columns


def test_sharegpt_conversations():
    row = {"conversations": [{"from": "system", "value": "S"},
                             {"from": "human", "value": "<image>What?"},
                             {"from": "gpt", "value": "Noise."},
                             {"from": "user", "value": "call it"},
                             {"from": "function", "value": "f()"},
                             {"from": "observation", "value": "42"},
                             {"from": "assistant", "value": "42."}],
           "images": ["a.png"]}
    sample = to_sample(row)
    assert sample.messages == [system("S"), user("<image>What?"), assistant("Noise."), user("call it"),
                               Message("tool", "f()"), Message("tool", "42"), assistant("42.")]
    assert sample.images == ["a.png"]


def test_sharegpt_with_role_and_content_keys():
    sample = to_sample({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    assert sample.messages == [user("q"), assistant("a")]


@pytest.mark.parametrize("extra, query", [("", "Translate."), ("Hello", "Translate.\nHello"),
                                          (None, "Translate.")])
def test_alpaca(extra, query):
    row = {"instruction": "Translate.", "output": "Bonjour"}
    if extra is not None:
        row["input"] = extra
    assert to_sample(row).messages == [user(query), assistant("Bonjour")]


def test_query_response_history():
    row = {"query": "q3", "response": "r3", "history": [["q1", "r1"], ("q2", "r2")]}
    assert to_sample(row).messages == [user("q1"), assistant("r1"), user("q2"), assistant("r2"),
                                       user("q3"), assistant("r3")]
    assert to_sample({"query": "q", "response": "r"}).messages == [user("q"), assistant("r")]
    assert to_sample({"query": "q", "response": "r", "history": None}).messages == [user("q"), assistant("r")]


@pytest.mark.parametrize("row", [
    {"query": "q", "response": "r"},
    {"instruction": "q", "output": "r"},
    {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r"}]},
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]},
])
def test_system_column(row):
    assert to_sample({**row, "system": "You are terse."}).messages == [system("You are terse."), user("q"),
                                                                       assistant("r")]


def test_system_column_does_not_duplicate_a_system_message():
    row = {"messages": [{"role": "system", "content": "inline"}, {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "r"}], "system": "column"}
    messages = to_sample(row).messages
    assert [m.role for m in messages] == ["system", "user", "assistant"]


def test_rename_columns():
    row = {"question": "What is 1+1?", "answer": "2", "pic": "p.png", "keep": 1}
    renamed = rename_columns(row, {"question": "query", "answer": "response", "pic": "images"})
    assert renamed == {"query": "What is 1+1?", "response": "2", "images": "p.png", "keep": 1}
    sample = to_sample(renamed)
    assert sample.messages == [user("What is 1+1?"), assistant("2")]
    assert sample.images == ["p.png"]
    assert rename_columns(row, None) == row
    assert rename_columns(row, {}) == row


def test_rename_columns_to_sharegpt():
    row = {"dialog": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}], "sys": "S"}
    sample = to_sample(rename_columns(row, {"dialog": "conversations", "sys": "system"}))
    assert sample.messages == [system("S"), user("hi"), assistant("hello")]


def test_objects_are_kept():
    objects = {"ref": ["cat"], "bbox": [[1, 2, 3, 4]]}
    sample = to_sample({"query": "<ref-object>", "response": "<bbox>", "objects": objects})
    assert sample.objects == objects


# ---------------------------------------------------------------------------------------------------
# bad rows

def _msgs(*messages):
    return {"messages": list(messages)}


U = {"role": "user", "content": "q"}
A = {"role": "assistant", "content": "a"}


@pytest.mark.parametrize("row, field, words", [
    (_msgs(U, {"role": "bot", "content": "a"}), "messages[1].role", "unknown role 'bot'"),
    (_msgs({"content": "q"}, A), "messages[0].role", "unknown role None"),
    (_msgs(U), "messages", "no assistant turn"),
    (_msgs(U, {"role": "system", "content": "late"}, A), "messages[1].role", "system message may only come first"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": "hello"}, "messages", "non-empty list"),
    (_msgs(U, "not a message"), "messages[1]", "got str"),
    (_msgs({"role": "user", "content": 5}, A), "messages[0].content", "got int"),
    (_msgs({"role": "assistant", "content": None}), "messages[0].content", "got NoneType"),
    (_msgs({"role": "user", "content": "q", "loss": "yes"}, A), "messages[0].loss", "expected true or false"),
    (_msgs(U, {"role": "assistant", "content": "a", "loss": 1}), "messages[1].loss", "expected true or false"),
    (_msgs({"role": "user", "content": [{"type": "audio", "audio": "x.wav"}]}, A), "messages[0].content[0].type",
     "unknown content part type 'audio'"),
    (_msgs({"role": "user", "content": ["ok", {"type": "image"}]}, A), "messages[0].content[1]",
     "image part without a image"),
    (_msgs({"role": "user", "content": [3]}, A), "messages[0].content[0]", "content part object"),
    ({**_msgs(U, A), "images": 3}, "images", "expected a list"),
    ({**_msgs(U, A), "videos": 3.5}, "videos", "expected a list"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, "conversations[0].from", "unknown role 'alien'"),
    ({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": None}]},
     "conversations[1].value", "expected a string"),
    ({"conversations": ["human: hi"]}, "conversations[0]", "from and value"),
    ({"conversations": []}, "conversations", "non-empty list"),
    ({"instruction": "do", "output": 3}, "output", "expected a string"),
    ({"instruction": None, "output": "x"}, "instruction", "expected a string"),
    ({"query": "q", "response": "r", "history": [["q0"]]}, "history[0]", "[query, response] pair"),
    ({"query": "q", "response": "r", "history": [["q0", "r0"], ["q1", 5]]}, "history[1]", "pair of strings"),
    ({"query": "q", "response": "r", "history": "q0 r0"}, "history", "list of [query, response] pairs"),
    ({"query": "q"}, "response", "expected a string"),
    ({"response": "r"}, "query", "expected a string"),
    ({**_msgs(U, A), "objects": [1, 2]}, "objects", "ref and bbox"),
])
def test_bad_rows_name_the_field(row, field, words):
    with pytest.raises(DataError) as info:
        to_sample(row)
    assert info.value.field == field
    assert words in info.value.problem
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize("row", [[1, 2], "text", None, 3])
def test_non_object_rows(row):
    with pytest.raises(DataError, match="expected a JSON object, got") as info:
        to_sample(row)
    assert info.value.field is None
    assert type(row).__name__ in str(info.value)


def test_row_without_a_conversation_lists_its_columns():
    with pytest.raises(DataError, match="no conversation found") as info:
        to_sample({"prompt": "p", "completion": "c"})
    assert "prompt, completion" in str(info.value)
    assert "--columns" in str(info.value)


@pytest.mark.parametrize("row, field", [
    ({"conversations": [{"from": "human", "value": "q"}]}, "conversations"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "S"},
                        {"from": "gpt", "value": "a"}]}, "conversations[1].from"),
])
def test_sharegpt_turn_errors_name_the_conversations_column(row, field):
    with pytest.raises(DataError) as info:
        to_sample(row)
    assert info.value.field == field


@pytest.mark.parametrize("row, field", [
    (_msgs({"role": "user", "content": [{"type": "text", "text": 5}]}, A), "messages[0].content[0].text"),
    (_msgs({"role": "user", "content": [{"type": "text"}]}, A), "messages[0].content[0].text"),
    ({**_msgs(U, A), "system": 5}, "system"),
    ({"instruction": "i", "input": ["x"], "output": "o"}, "input"),
    ({"conversations": [{"from": ["human"], "value": "x"}]}, "conversations[0].from"),
])
def test_values_of_the_wrong_type_are_not_turned_into_text(row, field):
    with pytest.raises(DataError) as info:
        to_sample(row)
    assert info.value.field == field


def test_messages_remember_their_field_in_the_row():
    assert [m.where for m in to_sample({**_msgs(U, A), "system": "S"}).messages] == [
        "system", "messages[0].content", "messages[1].content"]
    assert [m.where for m in to_sample({"query": "q", "response": "r", "history": [["a", "b"]]}).messages] == [
        "history[0][0]", "history[0][1]", "query", "response"]
    assert [m.where for m in to_sample({"instruction": "i", "output": "o"}).messages] == ["instruction", "output"]


# ---------------------------------------------------------------------------------------------------
# --columns naming a known dataset (datasets_registry/datasets.json), and local files in those formats


def test_columns_naming_a_known_dataset_apply_its_mapping():
    # ms-swift's LaTeX_OCR preprocessing: the image and its LaTeX as the answer, one fixed question.
    row = {"image": "formula.png", "text": "x^{2}"}
    sample = to_sample(rename_columns(row, "AI-ModelScope/LaTeX_OCR"))
    assert sample.messages == [user("<image>Using LaTeX to perform OCR on the image."), assistant("x^{2}")]
    assert sample.images == ["formula.png"]
    with pytest.raises(VlftError) as info:
        rename_columns(row, "LaTeX_OCR")
    assert "nor a known dataset id" in str(info.value) and "AI-ModelScope/LaTeX_OCR" in str(info.value)


@pytest.mark.parametrize("row", [
    {"video_name": "v_1.mp4", "question": "What happens?", "answer": "A dog runs."},  # VideoChatGPT Generic
    {"video_name": "v_1.mp4", "question_1": "What happens?", "question_2": "And then?", "answer": "A dog runs."},
])
def test_rows_in_a_known_datasets_columns_are_detected(row):
    sample = to_sample(rename_columns(row, None))
    assert sample.messages == [user("<video>What happens?"), assistant("A dog runs.")]
    assert sample.videos == ["v_1.mp4"]
    # An explicit mapping is used as given, without detection.
    assert rename_columns(row, {"answer": "response"})["video_name"] == "v_1.mp4"


def test_a_known_format_that_adds_a_question_is_named_not_detected():
    row = {"image": "photo.png", "text": "a cat on a mat"}  # could be any captioning set
    assert rename_columns(row, None) == row
    with pytest.raises(DataError) as info:
        to_sample(rename_columns(row, None))
    assert "--columns AI-ModelScope/LaTeX_OCR applies its mapping" in str(info.value)


def test_sharegpt_function_call_with_parallel_calls():
    # LLaMA-Factory's function_call turns hold one call or a JSON list of parallel calls.
    calls = [{"name": "weather", "arguments": {"city": "Paris"}}, {"name": "weather", "arguments": {"city": "Rome"}}]
    row = {"conversations": [{"from": "human", "value": "Paris and Rome?"},
                             {"from": "function_call", "value": json.dumps(calls)},
                             {"from": "observation", "value": "21, 25"}, {"from": "gpt", "value": "21 and 25."}]}
    sample = to_sample(row)
    assert sample.messages == [user("Paris and Rome?"), Message("assistant", "", tool_calls=calls),
                               Message("tool", "21, 25"), assistant("21 and 25.")]
    row["conversations"][1]["value"] = "[]"
    with pytest.raises(DataError) as info:
        to_sample(row)
    assert info.value.field == "conversations[1].value" and "empty list" in info.value.problem


def test_data_check_of_local_files_in_known_formats(tmp_path, media_dir, vlft_cache, capsys):
    from vlft.cli.main import main

    latex = tmp_path / "latex.jsonl"
    latex.write_text(json.dumps({"image": str(media_dir / "a.png"), "text": "x^{2}"}) + "\n")
    videos = tmp_path / "video_qa.jsonl"
    videos.write_text(json.dumps({"video_name": str(media_dir / "v.mp4"), "question": "What moves?",
                                  "answer": "A bar."}) + "\n")
    argv = ["data", "check", "--model", "vlft/tiny-qwen3-vl", "--dataset"]
    # `--columns` takes a JSON object of renames, or the id of a known dataset whose mapping applies.
    assert main([*argv, str(latex), "--columns", "AI-ModelScope/LaTeX_OCR"]) == 0
    assert "lines: 1 (1 ok, 0 bad" in capsys.readouterr().out
    assert main([*argv, str(videos)]) == 0
    assert "lines: 1 (1 ok, 0 bad" in capsys.readouterr().out
    assert main([*argv, str(latex)]) == 1
    assert "--columns AI-ModelScope/LaTeX_OCR applies its mapping" in capsys.readouterr().out
