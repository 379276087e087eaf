"""The execution reward for code problems, built so that a policy cannot earn it without solving the problem.

A policy trained on a code reward searches for any program that makes the tests "pass". The sandbox
(`llmkit.evaluation.sandbox`) makes the run's verdict unforgeable from outside the program; this module makes
sure the *expected answers never enter the sandboxed process*, so nothing inside it can read or fake them:

* for each ``assert L == R`` whose right side is a literal (every assert of MBPP's training ids), the
  program only computes L, from the completion's code, and reports a canonical text of the value: plain
  data (numbers, str, bytes, None, and lists, tuples, dicts and sets of those) read through the built-in
  types' own C methods, so an object with an always-true ``__eq__``, or an int/list/dict subclass that lies
  about its contents, is reported as what it holds (or as no value). The harness process parses that text
  with `ast.literal_eval` and compares it with R, which only it has. A program that reads its own frames,
  source or constants finds the inputs, never the answers;
* the completion is compiled and run on its own (`exec` of its source), so it cannot change how the tests
  parse; the built-ins and module attributes the tests name (``sorted``, ``math.isclose``) are bound before
  it runs, so shadowing or patching them changes nothing the tests see;
* the reporting code reads no global name (a test disassembles it) and writes with a function bound before
  the completion ran. It may write a fake report: without the answers that is only a guess.

An assert that is not ``L == <literal>`` is evaluated inside the program and reported as its value's truth
(the weaker, in-process check; MBPP's training ids have none). Prompts should not show the asserts that are
scored (`llmkit.rl.rewards.mbpp_prompts` shows one and scores the others): a policy can copy shown answers
into a lookup table, and no execution check can tell that apart from a solution.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

# Runs inside the sandboxed program, defined before the completion. No global names, defaults or closures:
# everything, itself included (for recursion), comes in `env`.
_CHECKER = r"""
def __llmkit_canon(x, env):
    # the value as plain-data source text, read through the built-in types' C methods; None if it is not plain data
    (isinstance_, len_, range_, repr_, canon, int_, float_, complex_, str_, bytes_, list_, tuple_, dict_, set_,
     frozenset_, bool_) = env
    if x is None:
        return "None"
    if isinstance_(x, bool_):  # bool cannot be subclassed
        return "True" if x else "False"
    if isinstance_(x, int_):
        return repr_(int_.__add__(x, 0))
    if isinstance_(x, float_):
        return repr_(float_.__add__(x, 0.0))
    if isinstance_(x, complex_):
        return repr_(complex_.__add__(x, 0j))
    if isinstance_(x, str_):
        return repr_(str_.__add__(x, ""))
    if isinstance_(x, bytes_):
        return repr_(bytes_.__add__(x, b""))
    if isinstance_(x, list_) or isinstance_(x, tuple_):
        base = list_ if isinstance_(x, list_) else tuple_
        parts = []
        for i in range_(base.__len__(x)):
            part = canon(base.__getitem__(x, i), env)
            if part is None:
                return None
            parts.append(part)
        text = ", ".join(parts)
        if base is list_:
            return "[" + text + "]"
        return "(" + text + ("," if len_(parts) == 1 else "") + ")"
    if isinstance_(x, dict_):
        parts = []
        for key in dict_.keys(x):
            k = canon(key, env)
            v = canon(dict_.__getitem__(x, key), env)
            if k is None or v is None:
                return None
            parts.append(k + ": " + v)
        return "{" + ", ".join(parts) + "}"
    if isinstance_(x, set_) or isinstance_(x, frozenset_):
        base = set_ if isinstance_(x, set_) else frozenset_
        parts = []
        for item in base.__iter__(x):
            part = canon(item, env)
            if part is None:
                return None
            parts.append(part)
        return "{" + ", ".join(parts) + "}" if parts else "set()"
    return None


def __llmkit_main(completion_src, setup_src, tests_src, builtin_names, module_attrs, canon, marker,
                  exec_=exec, compile_=compile, getattr_=getattr, tuple_=tuple, next_=next, isinstance_=isinstance,
                  import_=__import__, type_=type, repr_=repr, builtins_module=__import__("builtins"),
                  write_=__import__("os").write):
    pristine_builtins = tuple_([getattr_(builtins_module, name) for name in builtin_names])
    pristine_attrs = tuple_([getattr_(import_(module), attr) for module, attr in module_attrs])
    env = (isinstance_, len, range, repr_, canon, int, float, complex, str, bytes, list, tuple, dict, set,
           frozenset, bool)
    function_type = type_(canon)
    code_type = type_(canon.__code__)
    tests_module = compile_(tests_src, "<tests>", "exec")  # compiled before the completion can run
    tests_code = next_(c for c in tests_module.co_consts if isinstance_(c, code_type))
    namespace = {"__name__": "__main__"}
    exec_(compile_(completion_src, "<completion>", "exec"), namespace)
    exec_(compile_(setup_src, "<setup>", "exec"), namespace)
    values = []
    function_type(tests_code, namespace)(pristine_builtins, pristine_attrs, values, canon, env)
    write_(2, ("\n" + marker + repr_(values) + "\n").encode())
"""

REPORT_MARKER = "LLMKIT-VALUES "

# Modules whose attributes tests name without importing them (the harness's program gave them the
# completion's import); their attributes are resolved before the completion runs.
_KNOWN_MODULES = frozenset(
    {"math", "cmath", "sys", "re", "collections", "itertools", "heapq", "functools", "operator", "string", "bisect"}
)


class _TestRewriter(ast.NodeTransformer):
    """Built-in names → `__b[i]`; `module.attr` → `__m[j]` (values bound before the completion ran)."""

    def __init__(self, builtin_names: list[str], module_attrs: list[tuple[str, str]]):
        self.builtins = {name: i for i, name in enumerate(builtin_names)}
        self.attrs = {pair: j for j, pair in enumerate(module_attrs)}

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id in self.builtins:
            return ast.copy_location(
                ast.Subscript(ast.Name("__b", ast.Load()), ast.Constant(self.builtins[node.id]), ast.Load()), node
            )
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if (
            isinstance(node.ctx, ast.Load)
            and isinstance(node.value, ast.Name)
            and (node.value.id, node.attr) in self.attrs
        ):
            return ast.copy_location(
                ast.Subscript(
                    ast.Name("__m", ast.Load()), ast.Constant(self.attrs[(node.value.id, node.attr)]), ast.Load()
                ),
                node,
            )
        self.generic_visit(node)
        return node


@dataclass(frozen=True)
class CheckPlan:
    """What one program reports, and what the harness compares it with: per assert, ("eq", expected) when the
    program reports L of `L == <literal>` (expected = the literal's value, never sent to the program), or
    ("truth", None) when it reports the whole assert's value."""

    program: str
    checks: tuple[tuple[str, Any], ...]


def top_level_names(code: str) -> list[str]:
    """Functions, classes and variables a (reference) solution defines at module level."""
    names = set()
    for node in ast.parse(code).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return sorted(names)


def _split_assert(node: ast.stmt) -> tuple[ast.expr, tuple[str, Any]]:
    """(the expression the program evaluates, the check the harness makes of its reported value)."""
    if not isinstance(node, ast.Assert):
        raise ValueError(f"code_tests expects assert statements, got: {ast.unparse(node)[:80]}")
    test = node.test
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        try:
            return test.left, ("eq", ast.literal_eval(test.comparators[0]))
        except ValueError:
            pass  # the expected side is not a literal: the program evaluates the whole assert
    return test, ("truth", None)


def build_check_plan(
    code: str, tests: list[str], setup: str = "", solution_names: tuple[str, ...] | list[str] = ()
) -> CheckPlan:
    """The sandboxed program for one completion and the harness-side checks of what it reports.

    `code` runs on its own, then `setup`; then, in a function whose built-ins and module attributes were bound
    before `code` ran, each assert's evaluated side is reported (see the module docstring). `solution_names`:
    names the task asks the solution to define even when they are built-in names (MBPP 126 asks for `sum`).
    Raises SyntaxError or ValueError when the test code itself is not a list of asserts.
    """
    import builtins

    tree = ast.parse("\n".join(tests))
    setup_tree = ast.parse(setup)
    expressions, checks = zip(*(_split_assert(node) for node in tree.body)) if tree.body else ((), ())
    bound = {
        n.id
        for t in (tree, setup_tree)
        for n in ast.walk(t)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    bound |= {
        (a.asname or a.name).split(".")[0]
        for t in (tree, setup_tree)
        for n in ast.walk(t)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }
    bound |= set(solution_names)
    nodes = [n for e in expressions for n in ast.walk(e)]
    builtin_names = sorted(
        {
            n.id
            for n in nodes
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and hasattr(builtins, n.id) and n.id not in bound
        }
    )
    module_attrs = sorted(
        {
            (n.value.id, n.attr)
            for n in nodes
            if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name)
            and n.value.id in _KNOWN_MODULES
            and n.value.id not in bound
        }
    )
    rewriter = _TestRewriter(builtin_names, module_attrs)
    lines = ["def __llmkit_tests(__b, __m, __out, __canon, __env):"]
    for expression in expressions:
        source = ast.unparse(ast.fix_missing_locations(rewriter.visit(expression)))
        # every assert is tried: an error in one is that assert's failure, not the others'
        lines += [
            "    try:",
            f"        __out.append(__canon({source}, __env))",
            "    except BaseException:",
            "        __out.append(None)",
        ]
    if not expressions:
        lines.append("    pass")
    call = (
        f"\n__llmkit_main({code!r}, {setup!r}, {chr(10).join(lines)!r}, {builtin_names!r}, {module_attrs!r}, "
        f"__llmkit_canon, {REPORT_MARKER!r})\n"
    )
    return CheckPlan(_CHECKER + call, tuple(checks))


def judge(plan: CheckPlan, result) -> list[bool]:
    """Per assert, whether it passed: the run completed under the sandbox's pass rule and the value it reported
    equals the expected one (parsed as a literal here, in the harness process), or is true for a "truth" check."""
    if not result.passed:
        return [False] * len(plan.checks)
    reports = [line for line in result.stderr_tail.splitlines() if line.startswith(REPORT_MARKER)]
    try:
        values = ast.literal_eval(reports[-1][len(REPORT_MARKER) :]) if reports else None
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        values = None
    if not isinstance(values, list) or len(values) != len(plan.checks):
        return [False] * len(plan.checks)
    verdicts = []
    for (kind, expected), text in zip(plan.checks, values):
        try:
            got = ast.literal_eval(text) if isinstance(text, str) and len(text) <= 1_000_000 else _MISSING
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            got = _MISSING  # nan/inf or an unparsable report: never equal
        if got is _MISSING:
            verdicts.append(False)
        elif kind == "eq":
            verdicts.append(bool(got == expected))  # plain data on both sides, compared in this process
        else:
            verdicts.append(bool(got))
    return verdicts


_MISSING = object()


def code_tests_plan(completion: str, record: dict[str, Any]) -> CheckPlan:
    """The check plan for one completion of an MBPP-style record (`test_list`, optional `test_setup_code` and
    `solution_names`); the code is extracted from the completion as the harness does."""
    from llmkit.evaluation.code import extract_code

    tests = list(record["test_list"])
    if not tests:
        raise ValueError(f"record {record.get('index')}: code_tests needs a non-empty test_list")
    return build_check_plan(
        extract_code(completion), tests, record.get("test_setup_code") or "", record.get("solution_names") or ()
    )


class CodeTestsReward:
    """Execution reward: 1 if the completion passes every test of its record, else 0; with `fraction`, the
    share of asserts passed. `score_batch` runs a whole rollout's programs at once in the sandbox (`workers`
    at a time, the harness's MBPP limits); calling the object scores one completion."""

    def __init__(self, fraction: bool = False, timeout_s: float = 10.0, workers: int | None = None):
        from llmkit.evaluation.tasks.mbpp import MBPP

        self.fraction = fraction
        self.limits = MBPP(timeout_s=timeout_s).limits
        self.workers = workers

    def verdicts(self, completions: list[str], records: list[dict[str, Any]]) -> list[list[bool]]:
        """Per completion, per assert: passed or not."""
        from llmkit.evaluation.sandbox import run_programs

        plans = [code_tests_plan(c, r) for c, r in zip(completions, records)]
        results = run_programs([p.program for p in plans], self.limits, workers=self.workers, show_progress=False)
        return [judge(p, r) for p, r in zip(plans, results)]

    def score_batch(self, completions: list[str], records: list[dict[str, Any]]) -> list[float]:
        """One reward per (completion, record)."""
        out = []
        for passed in self.verdicts(completions, records):
            out.append(sum(passed) / len(passed) if self.fraction else float(all(passed)))
        return out

    def __call__(self, completion: str, record: dict[str, Any]) -> float:
        """The reward of one completion."""
        return self.score_batch([completion], [record])[0]
