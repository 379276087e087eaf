"""The execution reward for code problems, built so that a policy cannot earn it without solving the problem.

A policy trained on a code reward searches for any program that makes the tests "pass". The sandbox
(`llmkit.evaluation.sandbox`) already makes the verdict unforgeable from outside the program: the run must
reach its last statement, builtins must be untouched, and the token that reports a pass is out of reach.
What it cannot see is a test that passes for the wrong reason *inside* the program. The RL program is
therefore built so the test code keeps its meaning whatever the completion does:

* the completion is compiled and run on its own (`exec` of its source) in a fresh namespace, so it cannot
  change how the tests parse (an unterminated string, a dangling `if`, a trailing backslash); the setup
  code then runs in the same namespace, and the asserts run inside one function over it;
* each ``assert L == R`` is rewritten to ``assert __same(L, R, __env)``: equal only when both sides have
  the same exact type and, for plain data (numbers, str, bytes, None, and lists, tuples, dicts and sets of
  them), equal element by element; an object with an always-true ``__eq__`` or a subclass of ``int`` or
  ``list`` fails. (Numbers compare across int, float and bool by value, as ``==`` does.) For other types
  (a class the problem defines, ``Counter``) the type must match and then ``==`` decides;
* the built-ins the tests name (``sorted``, ``set``, ``abs``) and the module attributes they name
  (``math.isclose``, ``sys.getsizeof``) are resolved before the completion runs, so shadowing or patching
  them from the completion changes nothing the tests see;
* all of that state is arguments and locals of functions bound before the completion ran, with no global
  names, defaults or closures that the completion could rebind through frames.

An assert that is not an ``==`` comparison keeps the plain Python semantics (as in the harness). Not
closed: a completion that patches a method of a pure-Python class the tests compare with ``==`` (e.g.
``collections.Counter.__eq__``), or that defines the class of the expected value itself. Every program still
runs in the sandbox with the harness's limits and pass rule.
"""

from __future__ import annotations

import ast
from typing import Any

# Runs inside the sandboxed program, defined before the completion. No global names, defaults or closures:
# everything, itself included (for recursion), comes in `env`.
_CHECKER = r'''
def __llmkit_scalar_key(x, env):
    # a dict key or set element: an exact scalar, or an exact tuple of such (nested), hashed by built-in code only
    type_, scalars, scalar_key, tuple_ = env[3], env[4], env[6], env[13]
    if type_(x) in scalars:
        return True
    if type_(x) is not tuple_:
        return False
    for item in x:
        if not scalar_key(item, env):
            return False
    return True


def __llmkit_same(a, b, env):
    (isinstance_, len_, range_, type_, scalars, same, scalar_key,
     int_, float_, complex_, str_, bytes_, list_, tuple_, dict_, set_, frozenset_, bool_) = env
    # Compare the data, read through the built-in types' own C methods, never the objects' methods: an int,
    # list or dict subclass whose __eq__, __len__, __iter__ or __getitem__ lies is read as the data it holds.
    # Every name used here is a local (from `env`): the function reads no global that could be rebound.
    if b is None:
        return a is None
    if isinstance_(b, (int_, float_, complex_)):  # bool is an int; 2 == 2.0 as with ==
        if isinstance_(a, int_):
            x = int_.__add__(a, 0)
        elif isinstance_(a, float_):
            x = float_.__add__(a, 0.0)
        elif isinstance_(a, complex_):
            x = complex_.__add__(a, 0j)
        else:
            return False
        return x == b
    if isinstance_(b, str_):
        return isinstance_(a, str_) and str_.__add__(a, "") == b
    if isinstance_(b, bytes_):
        return isinstance_(a, bytes_) and bytes_.__add__(a, b"") == b
    for base in (list_, tuple_):
        if isinstance_(b, base):
            if not isinstance_(a, base) or base.__len__(a) != len_(b):
                return False
            for i in range_(len_(b)):
                if not same(base.__getitem__(a, i), b[i], env):
                    return False
            return True
    if isinstance_(b, dict_):
        if not isinstance_(a, dict_) or dict_.__len__(a) != len_(b):
            return False
        for key in dict_.keys(a):
            if not scalar_key(key, env) or key not in b or not same(dict_.__getitem__(a, key), b[key], env):
                return False
        return True
    if isinstance_(b, (set_, frozenset_)):
        if isinstance_(a, set_):
            items = list_(set_.__iter__(a))
        elif isinstance_(a, frozenset_):
            items = list_(frozenset_.__iter__(a))
        else:
            return False
        for item in items:
            if not scalar_key(item, env):
                return False
        return len_(items) == len_(b) and set_(items) == set_(b)
    return type_(a) is type_(b) and a == b  # not plain data (the problem's own class): same exact type, then ==


def __llmkit_main(completion_src, setup_src, tests_src, builtin_names, module_attrs, same, scalar_key,
                  exec_=exec, compile_=compile, getattr_=getattr, tuple_=tuple, next_=next, isinstance_=isinstance,
                  import_=__import__, type_=type, len_=len, range_=range, builtins_module=__import__("builtins")):
    pristine_builtins = tuple_([getattr_(builtins_module, name) for name in builtin_names])
    pristine_attrs = tuple_([getattr_(import_(module), attr) for module, attr in module_attrs])
    env = (isinstance_, len_, range_, type_, (int, float, bool, complex, str, bytes, type_(None)), same, scalar_key,
           int, float, complex, str, bytes, list, tuple, dict, set, frozenset, bool)
    function_type = type_(same)
    code_type = type_(same.__code__)
    tests_module = compile_(tests_src, "<tests>", "exec")  # compiled before the completion can run
    tests_code = next_(c for c in tests_module.co_consts if isinstance_(c, code_type))
    namespace = {"__name__": "__main__"}
    exec_(compile_(completion_src, "<completion>", "exec"), namespace)
    exec_(compile_(setup_src, "<setup>", "exec"), namespace)
    function_type(tests_code, namespace)(same, env, pristine_builtins, pristine_attrs)

'''

# Modules whose attributes tests name without importing them (the harness's program gave them the
# completion's import); their attributes are resolved before the completion runs.
_KNOWN_MODULES = frozenset({"math", "cmath", "sys", "re", "collections", "itertools", "heapq", "functools",
                            "operator", "string", "bisect"})


class _TestRewriter(ast.NodeTransformer):
    """`assert L == R` → `assert __same(L, R, __env)`; built-in names → `__b[i]`; `module.attr` → `__m[j]`."""

    def __init__(self, builtin_names: list[str], module_attrs: list[tuple[str, str]]):
        self.builtins = {name: i for i, name in enumerate(builtin_names)}
        self.attrs = {pair: j for j, pair in enumerate(module_attrs)}

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        self.generic_visit(node)
        test = node.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            call = ast.Call(func=ast.Name("__same", ast.Load()),
                            args=[test.left, test.comparators[0], ast.Name("__env", ast.Load())], keywords=[])
            node.test = ast.copy_location(call, test)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id in self.builtins:
            return ast.copy_location(ast.Subscript(ast.Name("__b", ast.Load()), ast.Constant(self.builtins[node.id]),
                                                   ast.Load()), node)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name) and (node.value.id, node.attr) in self.attrs:
            return ast.copy_location(ast.Subscript(ast.Name("__m", ast.Load()),
                                                   ast.Constant(self.attrs[(node.value.id, node.attr)]), ast.Load()), node)
        self.generic_visit(node)
        return node


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


def strict_test_program(code: str, tests: list[str], setup: str = "", solution_names: tuple[str, ...] | list[str] = ()) -> str:
    """The sandboxed program for one completion: `code` run on its own, then `setup`, then the `tests` (assert
    lines) in a function whose equality check, built-ins and module attributes the completion cannot change
    (see the module docstring). `solution_names`: names the task asks the solution to define, even when they
    are built-in names (MBPP 126 asks for a `sum`); the tests then call the completion's. Raises SyntaxError
    when the test code itself does not parse."""
    import builtins

    tree = ast.parse("\n".join(tests))
    setup_tree = ast.parse(setup)
    bound = {n.id for t in (tree, setup_tree) for n in ast.walk(t) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    bound |= {(a.asname or a.name).split(".")[0] for t in (tree, setup_tree) for n in ast.walk(t)
              if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    loads = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    bound |= set(solution_names)
    builtin_names = sorted({n.id for n in loads if hasattr(builtins, n.id) and n.id not in bound})
    module_attrs = sorted({(n.value.id, n.attr) for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                           and isinstance(n.value, ast.Name) and n.value.id in _KNOWN_MODULES and n.value.id not in bound})
    tree = _TestRewriter(builtin_names, module_attrs).visit(tree)
    function = ast.FunctionDef(
        name="__llmkit_tests",
        args=ast.arguments(posonlyargs=[], args=[ast.arg(a) for a in ("__same", "__env", "__b", "__m")],
                           kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=tree.body or [ast.Pass()], decorator_list=[], returns=None, type_params=[])
    tests_src = ast.unparse(ast.fix_missing_locations(ast.Module(body=[function], type_ignores=[])))
    call = f"\n__llmkit_main({code!r}, {setup!r}, {tests_src!r}, {builtin_names!r}, {module_attrs!r}, __llmkit_same, __llmkit_scalar_key)\n"
    return _CHECKER + call


def code_tests_programs(completion: str, record: dict[str, Any], fraction: bool = False) -> list[str]:
    """The program(s) for one completion of an MBPP-style record (`test_list`, optional `test_setup_code` and
    `solution_names`): all asserts together, or one program per assert (`fraction`). The code is extracted
    as the harness does."""
    from llmkit.evaluation.code import extract_code

    tests = list(record["test_list"])
    if not tests:
        raise ValueError(f"record {record.get('index')}: code_tests needs a non-empty test_list")
    code = extract_code(completion)
    setup = record.get("test_setup_code") or ""
    groups = [[t] for t in tests] if fraction else [tests]
    names = record.get("solution_names") or ()
    return [strict_test_program(code, group, setup, names) for group in groups]


class CodeTestsReward:
    """Execution reward: 1 if the completion passes every test of its record in the sandbox, else 0; with
    `fraction`, the share of asserts passed (each its own run). `score_batch` runs a whole rollout's programs
    at once, `workers` at a time; calling the object scores one completion."""

    def __init__(self, fraction: bool = False, timeout_s: float = 10.0, workers: int | None = None):
        from llmkit.evaluation.tasks.mbpp import MBPP

        self.fraction = fraction
        self.limits = MBPP(timeout_s=timeout_s).limits  # the harness's limits for MBPP
        self.workers = workers

    def score_batch(self, completions: list[str], records: list[dict[str, Any]]) -> list[float]:
        """One reward per (completion, record)."""
        from llmkit.evaluation.sandbox import run_programs

        per_completion = [code_tests_programs(c, r, self.fraction) for c, r in zip(completions, records)]
        results = iter(run_programs([p for progs in per_completion for p in progs], self.limits, workers=self.workers,
                                    show_progress=False))
        scores = []
        for progs in per_completion:
            passed = [next(results).passed for _ in progs]
            scores.append(sum(passed) / len(passed))
        return scores

    def __call__(self, completion: str, record: dict[str, Any]) -> float:
        """The reward of one completion."""
        return self.score_batch([completion], [record])[0]
