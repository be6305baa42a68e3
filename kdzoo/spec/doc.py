"""Renders docs/spec.md from the spec models, so the reference cannot drift from the code.

Regenerate with ``python -m kdzoo.spec.doc > docs/spec.md`` (a test checks it is current).
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from kdzoo.spec import INHERITED_BY_TEACHERS, DistillSpec, TrainSpec

INTRO = """# Spec reference

A spec is a YAML (or JSON) file that `kdzoo run` reads. Every object refuses unknown
keys; component references (`{name, params}`) are checked against the installed
plugins and their `params` against the component's own params model (`kdzoo plugins`
lists components; `kdzoo plugins --json` shows their params). A component reference
may be written as a bare name (`augmentation: weak`).

`matrix:` (any run kind) maps dotted paths to lists of values; the spec expands into
the product of all values, one run ("arm") each, run in `OUTPUT_DIR/NAME/arms/ARM`.
Its one key that is not a path, `variants:`, lists mappings of dotted paths that one arm
sets together (`{name: ft, losses: [...], stages: [...]}`; `name` names the arm), for
arms that differ in several fields at once; it multiplies with the other keys.
Inline teachers inherit {inherited} from their distill spec unless they set them, take the
seed `1000 * seed + index + 1` unless they set one, and are trained once per content
(cached in `OUTPUT_DIR/teachers/`). An inline teacher may itself be distilled
(`train: {kind: distill, student: ..., teachers: [...]}`): a teacher-assistant chain
(TAKD: big teacher -> assistant -> student) or born-again generations (BAN: each
generation distils from the one before) is one spec, each link trained once, inside out,
and passing the inherited fields on to its own teachers.

This page is generated from the code (`python -m kdzoo.spec.doc`).

## Stages

`stages:` (distill runs) cuts the run's `epochs` into slices trained in order, for methods
that pre-train or initialise before distilling (RepDistiller's FT, AB and FSP,
`train_student.py` with `helper/pretrain.py`). `epochs` stays the run's total: each stage
takes its `epochs` of it, and the stages' epochs add up to it. A stage may weigh the loss
terms anew (`weights`, by term name; the terms it leaves out keep their weight in
`losses`); a term of weight 0 is not computed in that stage, so what only it trains stays
as it is. A stage may bring its own `optimizer` and `schedule`, field by field over the
run's; every stage starts a fresh optimizer over what it trains and schedules the lr over
its own epochs (milestones are fractions of the stage). `student: frozen` leaves the
student out of the stage's optimizer and its BatchNorm in eval mode: only the losses'
modules train. The loss modules (connectors, paraphrasers) are the same through every
stage, so what one stage trains carries to the next. A loss reads the stage's name as
`DistillBatch.stage`, and `epoch`, `epochs`, `step` and `steps` count within the stage; a
loss that declares the stage names it understands (`Loss.stages`: `ft` paraphraser,
transfer; `ab`, `fsp` init) takes part only in stages of those names, and any other name
where it has a weight is refused. Each record of `metrics.jsonl` names its stage, and a run
resumes inside a stage or at a boundary as it would have gone on uninterrupted.

```yaml
epochs: 270                     # 30 + 240
losses: [{name: ce}, {name: ft, weight: 200}]
stages:
  - {name: paraphraser, epochs: 30, student: frozen, weights: {ce: 0, ft: 1},
     optimizer: {lr: 0.01}, schedule: {name: constant}}
  - {name: transfer, epochs: 240}   # the run's weights, optimizer and schedule
```
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:  # a tagged union's members: the types, not the tags
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "**required**"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True) or "(defaults)"
    if isinstance(value, list):
        value = [v.model_dump(mode="json", exclude_defaults=True) if isinstance(v, BaseModel) else v for v in value]
    return f"`{value}`"


def _constraints(field) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "min items"), ("pattern", "pattern")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"{sign} {getattr(meta, attr)}")
    return ", ".join(parts)


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    stack = [root]
    while stack:
        model = stack.pop(0)
        if model in seen:
            continue
        seen.append(model)
        for field in model.model_fields.values():
            todo = [field.annotation]
            while todo:
                tp = todo.pop()
                if isinstance(tp, type) and issubclass(tp, BaseModel):
                    stack.append(tp)
                todo.extend(typing.get_args(tp))
    return seen


def render() -> str:
    fields = [f"`{name}`" for name in INHERITED_BY_TEACHERS]
    out = [INTRO.replace("{inherited}", ", ".join(fields[:-1]) + " and " + fields[-1])]
    done: set[type[BaseModel]] = set()
    for root in (TrainSpec, DistillSpec):
        for model in _models(root):
            if model in done:
                continue
            done.add(model)
            out.append(f"\n## {model.__name__}\n")
            doc = (model.__doc__ or "").strip().splitlines()
            if doc:
                out.append(doc[0] + "\n")
            out.append("| field | type | default | constraints | description |")
            out.append("|---|---|---|---|---|")
            for name, field in model.model_fields.items():
                cells = [f"`{name}`", _type_name(field.annotation), _default(field), _constraints(field), field.description or ""]
                out.append("| " + " | ".join(c.replace("|", "\\|") if "`" not in c or "pattern" in c else c for c in cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
