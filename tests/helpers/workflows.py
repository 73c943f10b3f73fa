"""UI-format workflows (as ComfyUI's frontend saves them) checked against a server's ``/object_info`` and converted to
the API format ``/prompt`` takes.

Conversion rules (frontend 1.x, workflow version 0.4):

* virtual frontend-only nodes (notes, reroutes, primitives) are dropped; muted (mode 2) nodes are refused; a
  bypassed node (mode 4) is dropped and each link from its output goes to what feeds its first input of the same
  type (the frontend's rule), e.g. a bypassed LoRA loader passes the checkpoint's MODEL and CLIP on;
* each input of ``input_order`` (required, then optional) that is a widget (INT, FLOAT, STRING, BOOLEAN, COMBO or a
  V1 list combo) takes the next entry of ``widgets_values``; an input with ``control_after_generate`` (seeds) is
  followed by one extra entry ("fixed", "randomize", ...), which is skipped;
* an input connected by a link becomes ``[origin_id, origin_slot]`` (a link to a widget input replaces its value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Frontend-only node types that never reach the server.
VIRTUAL_NODES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
_WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})


def _input_specs(info: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    """(name, type, options) of a node's inputs in ``input_order`` (required first)."""
    specs = []
    for section in ("required", "optional"):
        declared = info["input"].get(section, {})
        for name in info.get("input_order", {}).get(section, list(declared)):
            spec = declared[name]
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs.append((name, kind, options))
    return specs


def _is_widget(kind: Any) -> bool:
    return isinstance(kind, list) or kind in _WIDGET_TYPES


def _types_compatible(out_type: str, in_type: Any) -> bool:
    if isinstance(in_type, list):
        in_type = "COMBO"
    if "*" in (out_type, in_type):
        return True
    return bool(set(str(out_type).split(",")) & set(str(in_type).split(",")))


def validate_workflow(workflow: dict[str, Any], object_info: dict[str, Any]) -> list[str]:
    """Problems of a UI workflow against ``/object_info``: unknown node types, dangling or mistyped links, required
    inputs without a link or widget value. Empty when the workflow loads cleanly."""
    problems: list[str] = []
    nodes = {node["id"]: node for node in workflow["nodes"]}
    for node in workflow["nodes"]:
        if node["type"] not in VIRTUAL_NODES and node["type"] not in object_info:
            problems.append(f"node {node['id']}: unknown node type {node['type']!r}")
    for link in workflow["links"]:
        link_id, origin_id, origin_slot, target_id, target_slot, kind = link[:6]
        origin, target = nodes.get(origin_id), nodes.get(target_id)
        if origin is None or target is None:
            problems.append(f"link {link_id}: points at a missing node")
            continue
        if link_id not in origin["outputs"][origin_slot].get("links", []):
            problems.append(f"link {link_id}: not listed on node {origin_id}'s output {origin_slot}")
        if target["inputs"][target_slot].get("link") != link_id:
            problems.append(f"link {link_id}: not the link of node {target_id}'s input {target_slot}")
        for end, node in (("origin", origin), ("target", target)):
            if node["type"] in VIRTUAL_NODES:
                problems.append(f"link {link_id}: {end} is a frontend-only {node['type']}")
        if origin["type"] not in object_info or target["type"] not in object_info:
            continue
        out_types = object_info[origin["type"]]["output"]
        if origin_slot >= len(out_types) or not _types_compatible(out_types[origin_slot], kind):
            problems.append(f"link {link_id}: {origin['type']} output {origin_slot} is not {kind}")
        in_name = target["inputs"][target_slot]["name"]
        specs = {name: k for name, k, _ in _input_specs(object_info[target["type"]])}
        if in_name not in specs:
            problems.append(f"link {link_id}: {target['type']} has no input {in_name!r}")
        elif not _types_compatible(kind, specs[in_name]):
            problems.append(f"link {link_id}: {target['type']}.{in_name} does not take {kind}")
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node["type"] not in object_info:
            continue
        try:
            to_api_node(node, object_info[node["type"]], lambda _link: ("0", 0))
        except ValueError as exc:
            problems.append(f"node {node['id']} ({node['type']}): {exc}")
    return problems


def to_api_node(node: dict[str, Any], info: dict[str, Any],
                resolve: Callable[[int], tuple[str, int]]) -> dict[str, Any]:
    """One UI node as an API-format entry ``{"class_type", "inputs"}``; ``resolve`` maps a link id to its origin."""
    links = {entry["name"]: entry.get("link") for entry in node.get("inputs", [])}
    values = list(node.get("widgets_values") or [])
    inputs: dict[str, Any] = {}
    for name, kind, options in _input_specs(info):
        link = links.get(name)
        if _is_widget(kind):
            if not values:
                if link is None and name in info["input"].get("required", {}):
                    raise ValueError(f"no widget value for required input {name!r}")
            else:
                value = values.pop(0)
                if options.get("control_after_generate") and values:
                    values.pop(0)
                if link is None:
                    inputs[name] = value
        if link is not None:
            origin_id, slot = resolve(link)
            inputs[name] = [origin_id, slot]
        elif not _is_widget(kind) and name in info["input"].get("required", {}):
            raise ValueError(f"required input {name!r} is not connected")
    if values:
        raise ValueError(f"{len(values)} widget value(s) left over ({values!r}): the widgets_values do not line up "
                         "with the node's widget inputs")
    return {"class_type": node["type"], "inputs": inputs}


def to_api(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The API-format prompt of a UI workflow (see the module docstring for the rules)."""
    origins = {link[0]: (str(link[1]), int(link[2])) for link in workflow["links"]}
    nodes = {str(node["id"]): node for node in workflow["nodes"]}

    def resolve(link: int) -> tuple[str, int]:
        origin_id, slot = origins[link]
        origin = nodes[origin_id]
        if origin.get("mode", 0) != 4:
            return origin_id, slot
        kind = origin["outputs"][slot]["type"]
        through = next((entry.get("link") for entry in origin.get("inputs", []) if entry["type"] == kind), None)
        if through is None:
            raise ValueError(f"bypassed node {origin_id} ({origin['type']}) has no {kind} input to pass on")
        return resolve(through)

    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) == 4:
            continue
        if node.get("mode", 0) == 2:
            raise ValueError(f"node {node['id']} ({node['type']}) is muted; not converted")
        prompt[str(node["id"])] = to_api_node(node, object_info[node["type"]], resolve)
    return prompt


#: Height of a node's title bar, drawn above its ``pos`` (LiteGraph's NODE_TITLE_HEIGHT).
TITLE_HEIGHT = 30
#: Least free space between two nodes of a shipped workflow, in canvas units.
NODE_GAP = 10


def node_box(node: dict[str, Any]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a UI node on the canvas, title bar included."""
    x, y = node["pos"][:2]
    w, h = node["size"][:2]
    return x, y - TITLE_HEIGHT, x + w, y + h


def boxes_overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float],
                  gap: float = 0.0) -> bool:
    """True when two (left, top, right, bottom) boxes are closer than ``gap`` in both directions (they overlap)."""
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def overlapping_nodes(boxes: dict[str, tuple[float, float, float, float]], gap: float = 0.0) -> list[str]:
    """``"a / b"`` for every pair of named boxes that overlap (or are closer than ``gap``)."""
    names = sorted(boxes)
    return [f"{a} / {b}" for i, a in enumerate(names) for b in names[i + 1:]
            if boxes_overlap(boxes[a], boxes[b], gap)]
