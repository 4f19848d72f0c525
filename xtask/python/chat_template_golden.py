"""Token ids of transformers' `apply_chat_template` (Qwen2's template, generation prompt on)
for a few ordinary conversations, to hold the pipeline's template to them.

    python xtask/python/chat_template_golden.py [--tokenizer DIR] [--out FILE]

DIR holds slow-tokenizer files (default: the committed tiny checkpoint's); with --real, the
real Qwen2 vocabulary is taken from llama.cpp's test vocabulary in the llama-cpp-python sdist
(PyPI, cached under ~/.cache/fastvlm-rs) and written into DIR first. Needs transformers, and
gguf for --real; no torch.
"""
import argparse
import json
import os
import tarfile
import tempfile
import urllib.request

# Qwen2's own chat template (Qwen2-*-Instruct's tokenizer_config.json).
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CASES = [
    [{"role": "user", "content": "Describe the image."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is on the desk?"}],
    [
        {"role": "user", "content": "Count the people.\nThen name   them, if you can."},
        {"role": "assistant", "content": "There are 3 people: Ana, Bo and Chen."},
        {"role": "user", "content": "Zähle noch einmal — 数一数, ok? 123 456"},
    ],
    [{"role": "user", "content": "  leading spaces,\ttabs and trailing newline\n"}],
]

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def real_vocab(out):
    """Writes the real Qwen2 vocabulary as slow-tokenizer files into `out`."""
    cache = os.path.join(os.path.expanduser("~"), ".cache", "fastvlm-rs", "ggml-vocab-qwen2.gguf")
    if not os.path.exists(cache):
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        meta = json.load(urllib.request.urlopen("https://pypi.org/pypi/llama-cpp-python/0.3.36/json"))
        url = next(u["url"] for u in meta["urls"] if u["packagetype"] == "sdist")
        with tempfile.TemporaryDirectory() as tmp:
            sdist = os.path.join(tmp, "sdist.tar.gz")
            urllib.request.urlretrieve(url, sdist)
            with tarfile.open(sdist) as tar:
                member = next(m for m in tar.getmembers() if m.name.endswith("models/ggml-vocab-qwen2.gguf"))
                with open(cache, "wb") as f:
                    f.write(tar.extractfile(member).read())
    from gguf import GGUFReader

    reader = GGUFReader(cache)

    def strings(key):
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    tokens = [t for t in strings("tokenizer.ggml.tokens") if t not in SPECIALS][:151643]
    merges = strings("tokenizer.ggml.merges")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    added = {s: len(tokens) + i for i, s in enumerate(SPECIALS)}
    with open(os.path.join(out, "added_tokens.json"), "w") as f:
        json.dump(added, f)
    decoder = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True} for s, i in added.items()}
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"added_tokens_decoder": decoder, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                   "errors": "replace", "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
                   "model_max_length": 8192, "bos_token": None, "unk_token": None}, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="fixtures/e2e/tiny-fastvlm")
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--out", default="fixtures/e2e/chat_template.json")
    a = ap.parse_args()
    if a.real:
        real_vocab(a.tokenizer)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    tok.chat_template = QWEN2_TEMPLATE
    cases = []
    for messages in CASES:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        turns = [m for m in messages if m["role"] != "system"]
        cases.append({"system": system, "messages": turns, "ids": list(map(int, ids))})
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump({"tokenizer": os.path.basename(os.path.normpath(a.tokenizer)),
                   "transformers": __import__("transformers").__version__, "cases": cases},
                  f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
