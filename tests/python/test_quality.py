#!/usr/bin/python3
"""tools/quality.py without a model run: its text options (domains given as
LABEL:FILE, --repeat, --chunks-per-file), the chunks it cuts, and the results
file's check of the text, which compares the files' sha256, not their sizes.

Usage: test_quality.py SCRATCH_DIR
"""

import hashlib
import io
import json
import os
import sys
import contextlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import quality  # noqa: E402


def expect_exit(argv, *fragments):
    try:
        quality.main(argv)
    except SystemExit as e:
        message = str(e.code)
        for f in fragments:
            assert f in message, f"{argv}: {message!r} lacks {f!r}"
        return message
    raise AssertionError(f"{argv}: no error")


def listing(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert quality.main(argv + ["--list-texts"]) == 0
    return out.getvalue()


def main(scratch):
    os.makedirs(scratch, exist_ok=True)

    def write(name, data):
        path = os.path.join(scratch, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return path

    C = quality.CHUNK
    prose_a = write("a.txt", b"a" * (2 * C + 10))        # 3 chunks: 2 full, one of 9 scored bytes
    prose_b = write("b.txt", b"b" * 100)                 # 1 short chunk
    code = write("src/c.py", bytes(range(256)) * 40)      # 10240 bytes: 5 chunks
    rep = write("rep.txt", b"r" * (5 * quality.REPEAT_PIECE))
    odd = write("x:y.txt", b"odd name")

    # Labels: LABEL:FILE; a file path with ':' or '/' before it is a plain file.
    assert quality.split_label("prose:a.txt") == ("prose", "a.txt")
    assert quality.split_label("code-2:dir/c.py") == ("code-2", "dir/c.py")
    assert quality.split_label("./x:y.txt") == (None, "./x:y.txt")
    assert quality.split_label("C:\\x") == ("C", "\\x") and quality.split_label("1:a") == (None, "1:a")
    assert quality.split_label("prose:") == (None, "prose:")
    groups = [["prose:a", "b", "code:c"], ["prose:d"], ["e:f", "g"]]
    assert quality.parse_text_groups(groups, "chunks", "--text") == \
        [("prose", ["a", "b", "d"]), ("code", ["c"]), ("e", ["f", "g"])]
    try:
        quality.parse_text_groups([["a.txt"]], "chunks", "--text")
        raise AssertionError("a file without a label accepted")
    except ValueError as e:
        assert "LABEL:FILE" in str(e) and "prose:a.txt" in str(e), e
    assert quality.parse_per_file(["stdlib=2", "x=0"]) == {"stdlib": 2, "x": 0}
    for bad in ("stdlib", "stdlib=-1", "stdlib=two"):
        try:
            quality.parse_per_file([bad])
            raise AssertionError(f"--chunks-per-file {bad} accepted")
        except ValueError:
            pass
    print("labels and groups parsed")

    # Chunks: every one, or N evenly spread (the middle one for N = 1).
    data = bytes(range(256)) * 40
    every = quality.file_chunks(data, 0)
    assert [len(t) for _, t, _ in every] == [C, C, C, C, C - 1]
    assert all(inp[1:] == tgt[:-1] and first == 0 for inp, tgt, first in every)
    assert quality.file_chunks(data, 1) == [every[2]]
    assert quality.file_chunks(data, 2) == [every[1], every[3]]
    assert quality.file_chunks(data, 9) == every
    pieces = quality.repeat_chunks(b"r" * (5 * quality.REPEAT_PIECE), quality.REPEAT_PIECES)
    assert len(pieces) == quality.REPEAT_PIECES
    assert all(f == quality.REPEAT_PIECE - 1 and len(t) == 2 * quality.REPEAT_PIECE - 1 for _, t, f in pieces)
    assert quality.repeat_chunks(b"short", 4) == []
    print("chunks cut")

    # The plan of a run from the command line, with the files' sha256.
    argv = ["--text", f"prose:{prose_a}", prose_b, "--text", f"code:{code}", "--repeat", f"long:{rep}",
            "--chunks-per-file", "code=2", "--model", os.path.join(scratch, "no-model")]
    text = listing(argv)
    assert "prose: chunks, 2 files, all chunks, 4 chunks, " f"{2 * C + 9 + 99} bytes scored" in text, text
    assert "code: chunks, 1 files, 2 chunk(s) per file, 2 chunks, " f"{2 * C} bytes scored" in text, text
    assert f"long: repeat, 1 files, all chunks, 4 chunks, {4 * quality.REPEAT_PIECE} bytes scored" in text, text
    assert hashlib.sha256(open(code, "rb").read()).hexdigest()[:16] in text, text
    args = quality.parse_args(argv)
    domains, chunks, texts = quality.plan(args)
    assert [d.label for d in domains] == ["prose", "code", "long"]
    assert texts["domains"]["code"]["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert listing(argv + ["--quick"]).count("2 chunks") == 2  # prose and code: their last 2
    expect_exit(["--text", os.path.join(scratch, "nothing.txt"), "--list-texts"], "give the domain first")
    expect_exit(["--text", "prose:" + os.path.join(scratch, "nothing.txt"), "--list-texts"], "no such file")
    expect_exit(argv + ["--chunks-per-file", "typo=1", "--list-texts"], "names no domain", "typo")
    expect_exit(["--text", f"p:{prose_b}", "--repeat", f"p:{rep}", "--list-texts"], "both --text and --repeat")
    expect_exit(["--repeat", f"r:{prose_b}", "--list-texts"], "no text to score")
    assert "odd: chunks, 1 files" in listing(["--text", f"odd:{odd}"])
    print("run plans listed; bad text options refused")

    # Shards: --shard I/N keeps chunks I, I+N, ... of each domain; the shards
    # together are the whole run, a domain with no chunk in a shard is left out
    # of it, and a results file records the shard.
    whole = {d.label: chunks[d.label] for d in domains}
    union = {label: [] for label in whole}
    for i in range(3):
        d_i, c_i, t_i = quality.plan(quality.parse_args(argv + ["--shard", f"{i}/3"]))
        assert t_i["shard"] == f"{i}/3" and quality.texts_key(t_i) != quality.texts_key(texts)
        assert [d.label for d in d_i] == [l for l in whole if whole[l][i::3]]
        for d in d_i:
            assert c_i[d.label] == whole[d.label][i::3]
            union[d.label] += c_i[d.label]
    assert all(sorted(union[l]) == sorted(whole[l]) for l in whole)
    assert "(shard 2/3)" in listing(argv + ["--shard", "2/3"])
    for bad in ("3/3", "1", "a/2", "2/1", "0/0"):
        expect_exit(argv + ["--shard", bad, "--list-texts"], "--shard")
    print("shards split the run")

    # The results file's check: the same bytes elsewhere agree; other bytes of the
    # same size do not; results files from before domains never agree.
    results = os.path.join(scratch, "results.json")
    moved = write("elsewhere/a-copy.txt", open(prose_a, "rb").read())
    same_size = write("a-other.txt", b"z" * (2 * C + 10))
    _, _, t_moved = quality.plan(quality.parse_args(argv[:1] + [f"prose:{moved}"] + argv[2:]))
    _, _, t_other = quality.plan(quality.parse_args(argv[:1] + [f"prose:{same_size}"] + argv[2:]))
    assert quality.texts_key(t_moved) == quality.texts_key(texts)
    assert t_other["domains"]["prose"]["scored_bytes"] == texts["domains"]["prose"]["scored_bytes"]
    assert quality.texts_key(t_other) != quality.texts_key(texts)
    with open(results, "w") as f:
        json.dump({"settings": {}, "runs": [], "texts": texts}, f)
    # A run on other bytes is refused before the model loads (--model does not exist).
    expect_exit(argv[:1] + [f"prose:{same_size}"] + argv[2:] + ["--results", results, "--settings", "exact"],
                "holds results on other text", "sha256")
    old = {"quick": False, "essay_bytes": 51128, "repeat_bytes": 4096}
    assert quality.texts_key(old) != quality.texts_key(texts)
    print("results file checked by sha256")

    # The report of a results file with domains, and of one from before them.
    row = {"setting": {"kind": "exact"}, "bits_per_element": 16.0, "run": 1, "seconds": 1.0,
           "attention_rel_error": [0.0, 0.0],
           "domains": {l: {"bpb": 1.5, "bytes": 10, "attention_rel_error": [0.0, 0.0]} for l in texts["domains"]}}
    cv = {"setting": {"kind": "commvq", "bits": 1, "window": 128}, "bits_per_element": 1.14, "run": 1,
          "seconds": 1.0, "attention_rel_error": [0.1, 0.2], "codebook": {"fingerprint": "0123456789abcdef"},
          "domains": {l: {"bpb": 1.6, "bytes": 10, "attention_rel_error": [0.1, 0.3]} for l in texts["domains"]}}
    meta = {"date": "d", "machine": "m", "library": "x", "command": "c", "codebooks": {}, "settings": ["exact"]}
    report = quality.render({"settings": {"exact": row, "commvq-1bit-w128": cv}, "runs": [meta], "texts": texts})
    assert "| prose bpb | Δ vs exact | code bpb | Δ vs exact | long bpb |" in report, report
    assert "+0.1000" in report and "| commvq-1bit-w128 | 0.1000 | 0.3000 |" in report, report
    old_row = {k: v for k, v in row.items() if k != "domains"}
    old_row.update(essays={"bpb": 1.8, "bytes": 51128}, repeat={"bpb": 1.3, "bytes": 4096})
    report = quality.render({"settings": {"exact": old_row}, "runs": [meta], "texts": old})
    assert "Essays: 51128 bytes predicted" in report and "| essays bpb |" in report, report
    print("reports rendered, new and old results files")


if __name__ == "__main__":
    main(*sys.argv[1:])
