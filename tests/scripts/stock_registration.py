"""Run in a subprocess by tests/test_stock_path_comfy.py: load the node pack twice (two package names, as two copies
in custom_nodes would be) into one in-process ComfyUI the way ComfyUI's loader does (``comfy_entrypoint`` then
``get_node_list``), and check that sampler ``gas`` and scheduler ``gas`` are registered once, that nothing of
ComfyUI's was replaced or wrapped, and that the lists the stock nodes read are the ones that changed. Prints ``OK``.

Usage: python -m tests.scripts.stock_registration COMFYUI_ROOT
"""

from __future__ import annotations

import asyncio
import sys

from tests.helpers.comfy_checks import load_pack
from tests.helpers.comfy_env import import_comfy_in_process


def snapshot(samplers, k_sampling) -> dict[str, object]:
    state = {f"k.{name}": getattr(k_sampling, name) for name in dir(k_sampling) if name.startswith("sample_")}
    state.update({f"s.{name}": handler for name, handler in samplers.SCHEDULER_HANDLERS.items()})
    state.update({f"f.{name}": getattr(samplers, name) for name in ("ksampler", "sampler_object", "calculate_sigmas",
                                                                    "KSAMPLER", "KSampler")})
    return state


def main(comfy_root: str) -> int:
    comfy = import_comfy_in_process(comfy_root, cpu=True)
    samplers = comfy.samplers
    from comfy.k_diffusion import sampling as k_sampling

    before = snapshot(samplers, k_sampling)
    lists = {"KSAMPLER_NAMES": samplers.KSAMPLER_NAMES, "SAMPLER_NAMES": samplers.SAMPLER_NAMES,
             "SCHEDULER_NAMES": samplers.SCHEDULER_NAMES}
    lengths = {name: len(names) for name, names in lists.items()}
    for package in ("gas_pack_copy_one", "gas_pack_copy_two"):
        pack = load_pack(name=package)
        extension = asyncio.run(pack.comfy_entrypoint())
        nodes = asyncio.run(extension.get_node_list())
        assert "GASModelPatch" in [n.define_schema().node_id for n in nodes]
    asyncio.run(extension.get_node_list())  # a third call of the same copy

    after = snapshot(samplers, k_sampling)
    new = sorted(set(after) - set(before))
    assert new == ["k.sample_gas", "s.gas"], new
    changed = [key for key in before if after[key] is not before[key]]
    assert not changed, f"ComfyUI objects replaced: {changed}"
    for name, names in lists.items():
        assert getattr(samplers, name) is names, f"{name} was replaced instead of extended"
        assert names.count("gas") == 1 and len(names) == lengths[name] + 1, (name, names)
    assert samplers.KSampler.SAMPLERS is samplers.SAMPLER_NAMES
    assert samplers.KSampler.SCHEDULERS is samplers.SCHEDULER_NAMES
    assert samplers.SCHEDULER_HANDLERS["gas"].use_ms
    assert samplers.sampler_object("gas").sampler_function is k_sampling.sample_gas
    # the stock nodes' INPUT_TYPES read these lists
    import comfy_extras.nodes_custom_sampler as custom

    assert "gas" in comfy.nodes.KSampler.INPUT_TYPES()["required"]["sampler_name"][0]
    assert "gas" in comfy.nodes.KSamplerAdvanced.INPUT_TYPES()["required"]["scheduler"][0]
    assert "gas" in custom.KSamplerSelect.INPUT_TYPES()["required"]["sampler_name"][0]
    assert "gas" in custom.BasicScheduler.INPUT_TYPES()["required"]["scheduler"][0]
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
