#!/usr/bin/env python3
"""Checks the dlopen loaders' hand-copied declarations against commvq.h.

The loaders (bindings/python, bindings/rust, bindings/go, bindings/csharp)
resolve the library's functions at run time, so the compiler never compares
their declarations with the header. This script does: every function of the
header must be declared by every loader with the same parameter names (where
the language has them) and types, every struct with the same fields in the
same order, every constant with the same value. The SWIG bindings need no
check: they are generated from the header itself.

Usage: check_declarations.py [--header commvq.h] [--self-test]
--self-test also checks that a changed header is noticed by every loader.
"""

import argparse
import ctypes
import importlib.util
import os
import re
import sys

sys.dont_write_bytecode = True  # nothing lands in the source tree

HERE = os.path.dirname(os.path.abspath(__file__))
BINDINGS = os.path.dirname(HERE)
DEFAULT_HEADER = os.path.join(os.path.dirname(BINDINGS), "include", "commvq", "commvq.h")

# Typedefs of the header that only rename another type.
ALIASES = {"commvq_status_t": "int32_t"}
# Constants a loader need not repeat: it checks the loaded library's major only.
OPTIONAL_CONSTANTS = {"COMMVQ_VERSION_MINOR", "COMMVQ_VERSION_PATCH", "COMMVQ_VERSION_NUMBER"}


def normalize(c_type):
    """'const  float *' -> 'const float*'; typedef aliases resolved."""
    c_type = re.sub(r"\s*\*\s*", "*", c_type.strip())
    c_type = re.sub(r"\s+", " ", c_type)
    base = c_type.rstrip("*")
    stars = c_type[len(base):]
    words = base.split()
    words = [ALIASES.get(word, word) for word in words]
    return " ".join(words) + stars


def split_declaration(text):
    """'const float* k' -> ('const float*', 'k')."""
    match = re.match(r"^(.*?)([A-Za-z_]\w*)$", text.strip())
    return normalize(match.group(1)), match.group(2)


# ---- the header -------------------------------------------------------------
class Header:
    def __init__(self, text):
        text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
        text = re.sub(r"//[^\n]*", " ", text)
        self.functions = {}  # name -> (return type, [(type, name)])
        for ret, name, params in re.findall(r"COMMVQ_API\s+([^;(]*?)\b(commvq_\w+)\s*\(([^)]*)\)\s*;", text):
            params = params.strip()
            args = [] if params in ("", "void") else [split_declaration(p) for p in params.split(",")]
            self.functions[name] = (normalize(ret), args)
        self.structs = {}  # typedef name -> [(type, name)]
        for body, name in re.findall(r"typedef\s+struct\s+\w+\s*\{(.*?)\}\s*(\w+)\s*;", text, flags=re.S):
            self.structs[name] = [split_declaration(field) for field in body.split(";") if field.strip()]
        self.constants = {}
        for name, value in re.findall(r"#define\s+(COMMVQ_\w+)[ \t]+\(?(-?\d+)u?\)?[ \t]*$", text, flags=re.M):
            self.constants[name] = int(value)
        if not self.functions or not self.structs or not self.constants:
            raise SystemExit("could not parse the header")


class Report:
    def __init__(self):
        self.errors = []

    def error(self, binding, message):
        self.errors.append(f"{binding}: {message}")


def compare_function(report, binding, name, want, got, same_type, names=True):
    """want/got: (return type, [(type, name)]); same_type(c_type, binding_type) -> bool."""
    want_ret, want_args = want
    got_ret, got_args = got
    if not same_type(want_ret, got_ret):
        report.error(binding, f"{name} returns {got_ret}, the header says {want_ret}")
    if len(want_args) != len(got_args):
        report.error(binding, f"{name} has {len(got_args)} parameters, the header {len(want_args)}")
        return
    for i, ((want_type, want_name), (got_type, got_name)) in enumerate(zip(want_args, got_args)):
        if names and got_name != want_name:
            report.error(binding, f"{name} parameter {i + 1} is named {got_name}, the header says {want_name}")
        if not same_type(want_type, got_type):
            report.error(binding, f"{name} parameter {want_name} is {got_type}, the header says {want_type}")


def compare_all(report, binding, header, functions, structs, constants, same_type, names=True,
                struct_names=None):
    for name, want in header.functions.items():
        if name not in functions:
            report.error(binding, f"lacks {name}")
        else:
            compare_function(report, binding, name, want, functions[name], same_type, names)
    for name in functions:
        if name not in header.functions:
            report.error(binding, f"declares {name}, which the header lacks")
    if structs is not None:
        struct_names = struct_names or {}
        for c_name, want_fields in header.structs.items():
            name = struct_names.get(c_name, c_name)
            if name not in structs:
                report.error(binding, f"lacks struct {c_name}")
                continue
            got_fields = structs[name]
            if [f for _, f in got_fields] != [f for _, f in want_fields]:
                report.error(binding, f"struct {c_name} fields {[f for _, f in got_fields]}, the header "
                                      f"{[f for _, f in want_fields]}")
                continue
            for (want_type, field), (got_type, _) in zip(want_fields, got_fields):
                if not same_type(want_type, got_type):
                    report.error(binding, f"{c_name}.{field} is {got_type}, the header says {want_type}")
    if constants is not None:
        for name, value in header.constants.items():
            if name not in constants:
                if name not in OPTIONAL_CONSTANTS:
                    report.error(binding, f"lacks constant {name}")
            elif constants[name] != value:
                report.error(binding, f"{name} = {constants[name]}, the header says {value}")
        for name in constants:
            if name not in header.constants:
                report.error(binding, f"declares constant {name}, which the header lacks")


# ---- Python (ctypes) ------------------------------------------------------------
def check_python(report, header):
    path = os.path.join(BINDINGS, "python", "commvq", "_api.py")
    spec = importlib.util.spec_from_file_location("commvq_api_declarations", path)
    api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(api)
    simple = {ctypes.c_uint16: "uint16_t", ctypes.c_uint32: "uint32_t", ctypes.c_int32: "int32_t",
              ctypes.c_uint64: "uint64_t", ctypes.c_float: "float", ctypes.c_double: "double",
              ctypes.c_char_p: "char*", ctypes.c_void_p: "void*", api.ProgressFn: "commvq_progress_fn",
              api._Codebook: "commvq_codebook_t", api._Cache: "commvq_cache_t"}
    for struct in (api.RopeInfo, api.CodebookInfo, api.CacheParams, api.CacheStats, api.TrainParams):
        simple[struct] = None  # filled below
    struct_names = {"commvq_rope_info_t": api.RopeInfo, "commvq_codebook_info_t": api.CodebookInfo,
                    "commvq_cache_params_t": api.CacheParams, "commvq_cache_stats_t": api.CacheStats,
                    "commvq_train_params_t": api.TrainParams}
    for c_name, struct in struct_names.items():
        simple[struct] = c_name

    def spell(t):
        if t is None:
            return "void"
        if t in simple:
            return simple[t]
        if hasattr(t, "_type_") and issubclass(t, ctypes._Pointer):
            return spell(t._type_) + "*"
        return repr(t)

    def same_type(c_type, py_type):
        # ctypes has no const; size_t and uint64_t are one type on LP64 machines.
        c_type = c_type.replace("const ", "").replace("size_t", "uint64_t")
        return c_type == py_type

    functions = {name: (spell(ret), [(spell(t), None) for t in args]) for name, ret, args in api.FUNCTIONS}
    structs = {c_name: [(spell(t), f) for f, t in struct._fields_] for c_name, struct in struct_names.items()}
    constants = {"COMMVQ_" + name: getattr(api, name) for name in dir(api)
                 if re.match(r"^(OK|ERR_|DEVICE_|DTYPE_|KEYS_|PAIRS_|SCALE_|ROPE_SCALING_|ATTEND_|VERSION_)", name)}
    compare_all(report, "python", header, functions, structs, constants, same_type, names=False)


# ---- Rust -----------------------------------------------------------------------
RUST_TYPES = {"u16": "uint16_t", "u32": "uint32_t", "i32": "int32_t", "u64": "uint64_t", "usize": "size_t",
              "f32": "float", "f64": "double", "c_char": "char", "c_void": "void"}


def rust_type(t):
    t = t.strip()
    if t.startswith("*const "):
        inner = rust_type(t[len("*const "):])
        return ("const " + inner if not inner.endswith("*") else inner) + "*"
    if t.startswith("*mut "):
        return rust_type(t[len("*mut "):]) + "*"
    return normalize(RUST_TYPES.get(t, t))


def check_rust(report, header):
    text = open(os.path.join(BINDINGS, "rust", "src", "sys.rs")).read()
    block = text[text.index("declare_api! {"):]
    functions = {}
    for name, params, ret in re.findall(r"fn (commvq_\w+)\(([^)]*)\)\s*(?:->\s*([^;]+))?;", block):
        args = [] if not params.strip() else [
            (rust_type(p.split(":", 1)[1]), p.split(":", 1)[0].strip()) for p in params.split(",") if p.strip()]
        functions[name] = (rust_type(ret) if ret else "void", args)
    structs = {}
    for name, body in re.findall(r"pub struct (\w+) \{(.*?)\n\}", text, flags=re.S):
        fields = re.findall(r"pub (\w+): ([^,]+),", body)
        if fields:
            structs[name] = [(rust_type(t), f) for f, t in fields]
    constants = {name: int(value) for name, value in
                 re.findall(r"pub const (COMMVQ_\w+): \w+ = (-?\d+);", text)}
    compare_all(report, "rust", header, functions, structs, constants, lambda a, b: a == b)


# ---- Go (cgo trampolines; structs and constants come from the header) -------------
def check_go(report, header):
    text = open(os.path.join(BINDINGS, "go", "api.h")).read()
    listed = re.search(r"#define COMMVQ_GO_FUNCTIONS\(X\)(.*?)\n\n", text, flags=re.S).group(1)
    names = {"commvq_" + n for n in re.findall(r"X\((\w+)\)", listed)}
    functions = {}
    for ret, name, params in re.findall(r"static inline ([\w\s\*]+?)\s*\bcq_(\w+)\(([^)]*)\)", text):
        args = [split_declaration(p) for p in params.split(",")]
        if args[0] != ("commvq_go_api*", "a") and args[0] != ("const commvq_go_api*", "a"):
            report.error("go", f"cq_{name} does not take the table first")
        functions["commvq_" + name] = (normalize(ret), args[1:])
    for name in sorted(names ^ set(functions)):
        report.error("go", f"{name} is in one of the table and the trampolines only")
    compare_all(report, "go", header, functions, None, None, lambda a, b: a == b)


# ---- C# (dlopen loader) ---------------------------------------------------------------
CS_TYPES = {"uint": "uint32_t", "int": "int32_t", "ulong": "uint64_t", "ushort": "uint16_t", "UIntPtr": "size_t",
            "float": "float", "double": "double", "byte": "char", "void": "void"}


def cs_type(t):
    t = t.strip()
    stars = len(t) - len(t.rstrip("*"))
    base = t.rstrip("*")
    return CS_TYPES.get(base, base) + "*" * stars


def check_csharp(report, header):
    text = open(os.path.join(BINDINGS, "csharp", "Native.cs")).read()
    functions = {}
    for ret, name, params in re.findall(r"public delegate (\S+) (commvq_\w+)\(([^)]*)\);", text):
        if name == "commvq_progress_fn":
            continue
        args = []
        for p in params.split(","):
            if p.strip():
                t, n = p.strip().rsplit(None, 1)
                args.append((cs_type(t), n.lstrip("@")))
        functions[name] = (cs_type(ret), args)
    structs = {}
    for name, body in re.findall(r"public struct (\w+)\s*\{(.*?)\}", text, flags=re.S):
        structs[name] = [(cs_type(t), f) for t, f in re.findall(r"public (\S+) (\w+);", body)]
    constants = {name: int(value) for name, value in re.findall(r"public const \w+ (COMMVQ_\w+) = (-?\d+);", text)}

    def same_type(c_type, cs):
        c_type = c_type.replace("const ", "")
        if cs == "IntPtr":  # a handle, a returned string or a function pointer
            return c_type.endswith("*") or c_type == "commvq_progress_fn"
        if cs == "IntPtr*":  # the out parameter of a handle
            return c_type.endswith("**")
        return c_type == cs

    compare_all(report, "csharp", header, functions, structs, constants, same_type)


CHECKS = (check_python, check_rust, check_go, check_csharp)


def run(header_text):
    header = Header(header_text)
    report = Report()
    for check in CHECKS:
        check(report, header)
    return header, report


def self_test(header_text):
    """A header with a changed parameter type and an extra function must fail every loader."""
    changed = header_text.replace("uint32_t seq, uint32_t n_tokens,", "uint32_t seq, uint64_t n_tokens,", 1)
    changed = changed.replace("#ifdef __cplusplus\n}", "COMMVQ_API int32_t commvq_new_function(void);\n"
                                                     "#ifdef __cplusplus\n}", 1)
    if changed.count("commvq_new_function") != 1 or "uint64_t n_tokens," not in changed:
        raise SystemExit("self-test: could not change the header")
    _, report = run(changed)
    ok = True
    for binding in ("python", "rust", "go", "csharp"):
        found = [e for e in report.errors if e.startswith(binding + ":")]
        for needle in ("commvq_cache_append parameter n_tokens", "lacks commvq_new_function"):
            if not any(needle in e for e in found):
                print(f"self-test: {binding} missed the change ({needle})")
                ok = False
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--header", default=DEFAULT_HEADER)
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    header_text = open(args.header).read()
    header, report = run(header_text)
    for error in report.errors:
        print(error)
    if report.errors:
        print(f"{len(report.errors)} declarations disagree with {args.header}")
        return 1
    print(f"{len(header.functions)} functions, {len(header.structs)} structs and {len(header.constants)} "
          f"constants agree in python, rust, go and csharp")
    if args.self_test:
        if not self_test(header_text):
            return 1
        print("self-test: a changed header is noticed by every loader")
    return 0


if __name__ == "__main__":
    sys.exit(main())
