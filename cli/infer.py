"""`vlft infer`: answer a dataset ([QUERY] / [LABELS] / [RESPONSE] and a result jsonl) or chat
interactively (`<<<` prompt, `<image>`/`<video>` ask for a path or URL, `clear`, `exit`, Ctrl-D)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from vlft.arguments import InferArguments
from vlft.cli.parsing import build_parser, parse_args
from vlft.errors import DataError

SEPARATOR = "-" * 50


def run(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        build_parser(InferArguments, "vlft infer").print_help()
        return 0
    args = parse_args(InferArguments, argv, "vlft infer")
    from vlft.errors import VlftError
    from vlft.infer.adapters import adapter_specs
    from vlft.infer.engine import InferEngine
    from vlft.infer.protocol import RequestConfig

    named = adapter_specs(args.adapters).named
    if named:
        raise VlftError(f"--adapters {', '.join(f'{k}={v}' for k, v in named.items())}: vlft infer merges its adapters "
                        "into the model (pass their paths); NAME=PATH serves them apart in vlft deploy")
    write_merged(args)
    engine = InferEngine(args=args)
    encoder = engine.encoder
    if args.stop_words:
        engine = StopWordsEngine(engine, args.stop_words)
    config = RequestConfig(max_tokens=None, temperature=args.temperature, top_p=args.top_p,
                           top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                           num_beams=args.num_beams, seed=args.seed,
                           stream=args.stream, logprobs=args.logprobs, top_logprobs=args.top_logprobs)
    if args.val_dataset or args.load_data_args:
        return answer_dataset(engine, args, config, encoder)
    return chat(engine, config, sys.stdin)


def write_merged(args: InferArguments) -> None:
    """--merge_lora true (ms-swift's infer / deploy flag): the adapter merged into its base is written to
    ADAPTER-merged as `vlft export --merge_lora true` writes it, or kept when that dir is there (as ms-swift does).
    The engine merges the adapter into the weights as it loads either way, so the answers are the merged model's."""
    if not args.merge_lora:
        return
    from vlft.cli.export import merge
    from vlft.export.arguments import ExportArguments, merged_dir_of

    merged = merged_dir_of(args.adapters[0])
    if merged.exists():
        print(f"--merge_lora: {merged} is there already; kept")
        return
    merge(ExportArguments(adapters=list(args.adapters), merge_lora=True, output_dir=str(merged),
                          model=args.model_dir or args.model, model_revision=args.model_revision,
                          torch_dtype=args.torch_dtype, use_hf=args.use_hf, hub_token=args.hub_token,
                          cache_dir=args.cache_dir))


def before_stop_words(text: str, words: list[str], final: bool = True) -> tuple[str, bool]:
    """(the part of `text` to show, whether a stop word ended it): the text before the first stop word; while
    streaming (final=False), less a tail that may yet become one."""
    starts = [i for i in (text.find(word) for word in words) if i >= 0]
    if starts:
        return text[:min(starts)], True
    held = 0 if final else max((n for word in words for n in range(1, len(word)) if text.endswith(word[:n])),
                               default=0)
    return text[:len(text) - held], False


class StopWordsEngine:
    """An engine whose answers end before the first of --stop_words (ms-swift's): generation stops at the token
    that completes one (RequestConfig.stop), and the text from the stop word on is cut off."""

    def __init__(self, engine, words: list[str]):
        self.engine, self.words = engine, list(words)

    def infer(self, requests: list, request_config=None) -> list:
        from vlft.infer.protocol import RequestConfig

        request_config = dataclasses.replace(request_config or RequestConfig(), stop=self.words)
        answers = self.engine.infer(requests, request_config)
        if request_config is not None and request_config.stream:
            return [self._streamed(chunks) for chunks in answers]
        for answer in answers:
            choice = answer.choices[0]
            choice.message.content, stopped = before_stop_words(choice.message.content, self.words)
            choice.finish_reason = "stop" if stopped else choice.finish_reason
        return answers

    def _streamed(self, chunks):
        text, shown, stopped = "", 0, False
        held: list[dict] = []  # logprobs of chunks not passed on, carried to the next one that is
        for chunk in chunks:  # drained to the end: the generation thread finishes before the next request
            choice = chunk.choices[0]
            final = choice.finish_reason is not None
            if not stopped:
                text += choice.delta.content or ""
                visible, stopped = before_stop_words(text, self.words, final=final)
                choice.delta.content, shown = visible[shown:] or None, len(visible)
            else:
                choice.delta.content = None
            if choice.logprobs is not None:
                held += choice.logprobs["content"]
            if choice.delta.content or final:
                if choice.logprobs is not None:
                    choice.logprobs, held = {"content": held}, []
                yield chunk


def _answer(engine, request, config) -> str:
    if not config.stream:
        text = engine.infer([request], config)[0].choices[0].message.content
        print(text, flush=True)
        return text
    return _printed_stream(engine.infer([request], config)[0])[0]


def val_rows(args: InferArguments) -> list:
    """Rows to answer: --val_dataset, or the training run's val split (--load_data_args)."""
    from vlft.data.loader import load_dataset_rows
    from vlft.paths import cache_root

    specs = list(args.val_dataset)
    if args.load_data_args:
        specs.append(str(run_val_split(Path(args.adapters[0] if args.adapters else args.model))))
    rows = []
    for spec in specs:
        rows += load_dataset_rows(spec, seed=args.seed, use_hf=args.use_hf, cache_root=cache_root(args.cache_dir),
                                  identity=args.identity)
    return rows


def run_val_split(trained: Path) -> Path:
    """The val split (`val_dataset.jsonl`) of the run that wrote `trained`: a checkpoint, a run dir, or a merged
    model (`checkpoint-N-merged`, beside the checkpoints, as ms-swift's `--load_data_args` finds its run)."""
    from vlft.errors import VlftError

    candidates = [trained / "val_dataset.jsonl", trained.parent / "val_dataset.jsonl"]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise VlftError(f"--load_data_args: no val_dataset.jsonl in {trained} or {trained.parent} (the run had no "
                        "validation split, or the model was moved out of its run dir); pass --val_dataset")
    return found


def answer_dataset(engine, args: InferArguments, config, encoder) -> int:
    result_path = Path(args.result_path) if args.result_path else (
        Path(args.adapters[-1]) / "infer_result.jsonl" if args.adapters else Path("infer_result.jsonl"))
    items, failures = dataset_requests(args, encoder)
    size = 1 if config.stream else args.max_batch_size
    with open(result_path, "w", encoding="utf-8") as out:
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            for (raw, request, labels), answer in zip(chunk, _answers(engine, [item[1] for item in chunk], config)):
                if isinstance(answer, DataError):
                    failures += 1
                    print(f"error: {answer.at(raw.source, raw.line)}", file=sys.stderr)
                    continue
                print(SEPARATOR)
                print(f"[QUERY] {request.messages[-1]['content']}")
                print(f"[LABELS] {labels}")
                print("[RESPONSE] ", end="", flush=True)
                if config.stream:
                    response, logprobs = _printed_stream(answer)
                else:
                    response, logprobs = answer.choices[0].message.content, answer.choices[0].logprobs
                    print(response, flush=True)
                # logprobs: null unless --logprobs true (ms-swift's result key)
                out.write(json.dumps({"source": raw.source, "line": raw.line, "messages": request.messages,
                                      "images": request.images, "videos": request.videos, "labels": labels,
                                      "response": response, "logprobs": logprobs}, ensure_ascii=False,
                                     default=str) + "\n")
    print(SEPARATOR)
    print(f"results: {result_path}")
    return 1 if failures else 0


def _answers(engine, requests: list, config) -> list:
    """Per request: the answer (streamed: its chunks), or the DataError that refused it. A batch that fails is
    answered request by request, so that one bad line does not take the others with it."""
    try:
        return engine.infer(requests, config)
    except DataError as e:
        if len(requests) == 1:
            return [e]
        return [answer for request in requests for answer in _answers(engine, [request], config)]


def _printed_stream(chunks) -> tuple[str, dict | None]:
    """The streamed answer's text, printed as it comes, and its logprobs gathered from the chunks (None when not
    asked for)."""
    pieces: list[str] = []
    tokens: list[dict] | None = None
    for chunk in chunks:
        choice = chunk.choices[0]
        if choice.delta.content:
            pieces.append(choice.delta.content)
            print(choice.delta.content, end="", flush=True)
        if choice.logprobs is not None:
            tokens = [] if tokens is None else tokens
            tokens.extend(choice.logprobs["content"])
    print(flush=True)
    return "".join(pieces), None if tokens is None else {"content": tokens}


def dataset_requests(args: InferArguments, encoder) -> tuple[list, int]:
    """[(raw row, InferRequest, labels)] of the rows to answer, and how many rows were bad (reported). The labels
    are the last answer as `vlft sft` trains it (grounding boxes written out); every line sft takes is taken."""
    from vlft.data.formats import to_sample
    from vlft.data.grounding import objects_of
    from vlft.infer.dataset_labels import trained_answer
    from vlft.infer.protocol import InferRequest

    items, failures = [], 0
    for raw in val_rows(args):
        try:
            if raw.error:
                raise raw.error
            sample = to_sample(raw.row, source=raw.source, line=raw.line, base_dir=raw.base_dir)
            labels = trained_answer(encoder, sample) if sample.messages[-1].role == "assistant" else None
        except DataError as e:
            failures += 1
            print(f"error: {e.at(raw.source, raw.line)}", file=sys.stderr)
            continue
        if labels is not None:
            sample.messages.pop()
        # the answer's <ref-object> / <bbox> placeholders go with it: the prompt keeps only the objects it takes
        objects = objects_of([m.content for m in sample.messages], sample.objects)
        request = InferRequest(messages=[{"role": m.role, "content": m.content} for m in sample.messages],
                               images=[_absolute(i, raw.base_dir) for i in sample.images],
                               videos=[_absolute(v, raw.base_dir) for v in sample.videos], objects=objects)
        items.append((raw, request, labels))
    return items, failures


def _absolute(ref, base_dir):
    from vlft.data.media import resolve_media_path

    if isinstance(ref, str) and not ref.startswith(("http://", "https://", "data:")) and base_dir is not None:
        return str(resolve_media_path(ref, base_dir))
    return ref


def chat(engine, config, stream) -> int:
    """The interactive loop; history is kept until `clear`."""
    from vlft.infer.protocol import InferRequest

    messages, images, videos = [], [], []
    while True:
        query = _read(stream, "<<< ")
        if query is None or query.strip() in ("exit", "quit"):
            print()
            return 0
        if query.strip() == "clear":
            messages, images, videos = [], [], []
            print("history cleared")
            continue
        new_images = [_read_media(stream, "image") for _ in range(query.count("<image>"))]
        new_videos = [_read_media(stream, "video") for _ in range(query.count("<video>"))]
        if None in new_images or None in new_videos:
            print()
            return 0
        request = InferRequest(messages + [{"role": "user", "content": query}], images + new_images,
                               videos + new_videos)
        try:
            answer = _answer(engine, request, config)
        except DataError as e:
            print(f"error: {e}")
            continue
        messages = request.messages + [{"role": "assistant", "content": answer}]
        images, videos = request.images, request.videos
        print(SEPARATOR)


def _read(stream, prompt: str) -> str | None:
    print(prompt, end="", flush=True)
    line = stream.readline()
    return None if line == "" else line.rstrip("\n")


def _read_media(stream, kind: str) -> str | None:
    """Ask until the path exists (or is a URL); None on end of input."""
    from vlft.data.media import resolve_media_path

    while True:
        ref = _read(stream, f"Input {'an image' if kind == 'image' else 'a video'} path or URL <<< ")
        if ref is None:
            return None
        ref = ref.strip()
        if ref.startswith(("http://", "https://", "data:")) or resolve_media_path(ref, Path.cwd()).is_file():
            return str(resolve_media_path(ref, Path.cwd())) if not ref.startswith(("http", "data:")) else ref
        print(f"not found: {ref}")
