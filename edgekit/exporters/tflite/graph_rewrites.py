"""FX graph rewrites of the exported PyTorch graph before litert-torch converts it: a global mean
that keeps the map NHWC, channel shuffles folded into a neighbouring conv (both in every graph),
and the int8-only rewrites (:data:`INT8_REWRITES`) that turn ops XNNPACK runs only in float
(hard-swish, PReLU, BN outside a conv, average pooling) into the same function in ops it runs in int8.
Each rewrite keeps the function and returns how many places it changed."""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["rewrite_for_nhwc", "fold_channel_shuffles", "INT8_REWRITES"]


def rewrite_for_nhwc(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``x.mean((2, 3))`` (keepdim False) on a 4-D map -> ``x.mean((2, 3), keepdim=True).flatten(1)``.

    litert-torch's layout pass keeps an op NHWC only when its output is 4-D too, so a global average
    pool that drops H and W forces the whole map back to NCHW through a TRANSPOSE (ESPNetv2's head);
    with keepdim the pool stays NHWC and the flatten of a (B, 1, 1, C) map is a plain reshape."""
    aten = torch.ops.aten
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.mean.dim:
            continue
        x, dims = node.args[0], node.args[1]
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if keepdim or val is None or val.dim() != 4 or sorted(d % 4 for d in dims) != [2, 3]:
            continue
        with gm.graph.inserting_after(node):
            pooled = gm.graph.call_function(aten.mean.dim, (x, [2, 3], True))
            with gm.graph.inserting_after(pooled):
                flat = gm.graph.call_function(aten.flatten.using_ints, (pooled, 1))
        node.replace_all_uses_with(flat)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm


_PER_CHANNEL_FREE = frozenset(getattr(torch.ops.aten, name).default for name in (
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "hardswish", "hardswish_", "silu", "silu_", "sigmoid",
    "sigmoid_", "gelu", "clamp"))  # elementwise ops with no per-channel parameters


def fold_channel_shuffles(gm: torch.fx.GraphModule) -> int:
    """A channel shuffle (reshape to (B, g, C/g, H, W), swap the two channel axes, reshape back)
    next to a conv through per-channel ops only -> that conv's channels reordered instead.

    litert-torch keeps a shuffle as RESHAPE, TRANSPOSE, RESHAPE (FBNet's grouped blocks: 9 TRANSPOSE
    in fbnet_a). The shuffled order can come out of the conv before it (its output channels
    permuted), or be undone by the conv after it (its input channels permuted), with the depthwise
    convs, BNs and activations in between following the new order; a grouped conv that takes the
    permutation becomes dense (its block-diagonal weight, zeros outside the groups). Same function,
    no TRANSPOSE. A shuffle with no such conv on either side, or whose tensors on the way have other
    readers, is left as it is."""
    aten = torch.ops.aten
    reshapes = (aten.reshape.default, aten.view.default, aten._unsafe_view.default)
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.transpose.int or \
                sorted(d % 5 for d in node.args[1:3]) != [1, 2]:
            continue
        split = node.args[0]
        if not (isinstance(split, torch.fx.Node) and split.target in reshapes and len(split.users) == 1
                and len(node.users) == 1):
            continue
        merge = next(iter(node.users))
        if merge.op == "call_function" and merge.target in (aten.clone.default, aten.contiguous.default) \
                and len(merge.users) == 1:
            merge = next(iter(merge.users))
        x, val5, out = split.args[0], split.meta.get("val"), merge.meta.get("val")
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if merge.target not in reshapes or val is None or val5 is None or out is None or val.dim() != 4 \
                or val5.dim() != 5 or tuple(out.shape) != tuple(val.shape):
            continue
        c, g = int(val.shape[1]), int(val5.shape[1])
        if g * int(val5.shape[2]) != c or tuple(val5.shape[3:]) != tuple(val.shape[2:]):
            continue
        perm = torch.tensor([(j % g) * (c // g) + j // g for j in range(c)])  # shuffled[j] = x[perm[j]]
        if not (_shuffle_into_producer(gm, x, perm) or _shuffle_into_consumer(gm, merge, perm)):
            continue
        merge.replace_all_uses_with(x)
        for dead in (merge, *([] if merge.args[0] is node else [merge.args[0]]), node, split):
            gm.graph.erase_node(dead)
        n += 1
    return n


def _per_channel(gm: torch.fx.GraphModule, node: torch.fx.Node, c: int) -> list[torch.Tensor | None] | None:
    """The per-channel parameters of ``node`` when it maps each of ``c`` channels on its own (an
    activation: [], a BN in eval: weight, bias, mean, var, a depthwise conv: weight, bias), else None."""
    aten = torch.ops.aten
    if node.op != "call_function" or node.kwargs:
        return None
    if node.target in _PER_CHANNEL_FREE:
        return []
    if node.target is aten.batch_norm.default and not node.args[5]:
        params = [_param_value(gm, a) for a in node.args[1:5]]
        return None if any(a is not None and p is None for a, p in zip(node.args[1:5], params)) else params
    if node.target is aten.conv2d.default:
        args = _conv_args(node)
        weight, bias = _param_value(gm, args[1]), _param_value(gm, args[2])
        if weight is not None and args[6] == c and tuple(weight.shape[:2]) == (c, 1) and \
                (args[2] is None or bias is not None):
            return [weight, bias]
    return None


def _conv_args(node: torch.fx.Node) -> list:
    """aten.conv2d's arguments with the defaults filled in: x, weight, bias, stride, padding, dilation, groups."""
    return list(node.args) + [None, [1, 1], [0, 0], [1, 1], 1][len(node.args) - 2:]


def _dense(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped conv's weight (out, in/groups, kh, kw) as the dense (out, in, kh, kw) one."""
    if groups == 1:
        return weight
    out, per_in = int(weight.shape[0]), int(weight.shape[1])
    per_out = out // groups
    dense = weight.new_zeros(out, per_in * groups, *weight.shape[2:])
    for k in range(groups):
        dense[k * per_out:(k + 1) * per_out, k * per_in:(k + 1) * per_in] = weight[k * per_out:(k + 1) * per_out]
    return dense


def _permute_chain(gm: torch.fx.GraphModule, chain: list[tuple[torch.fx.Node, list]], index: torch.Tensor) -> None:
    """Reorder the per-channel parameters of each node of ``chain`` by ``index``."""
    for node, params in chain:
        if not params:
            continue
        with gm.graph.inserting_before(node):
            new = [None if p is None else _constant(gm, p[index], "shuffled") for p in params]
        k = len(params)
        node.args = (node.args[0], *new, *node.args[1 + k:])


def _shuffle_into_producer(gm: torch.fx.GraphModule, x: torch.fx.Node, perm: torch.Tensor) -> bool:
    """Make the conv that ``x`` comes from (through per-channel ops) emit its channels shuffled."""
    aten = torch.ops.aten
    c = len(perm)
    chain, conv = [], x
    while isinstance(conv, torch.fx.Node) and len(conv.users) == 1:
        params = _per_channel(gm, conv, c)
        if params is None:
            break
        chain.append((conv, params))
        conv = conv.args[0]
    # the loop stopped on a node that is not per-channel (a depthwise conv would have joined the chain)
    # or that has other readers
    if not (isinstance(conv, torch.fx.Node) and conv.op == "call_function" and conv.target is aten.conv2d.default
            and not conv.kwargs and len(conv.users) == 1):
        return False
    args = _conv_args(conv)
    weight, bias = _param_value(gm, args[1]), _param_value(gm, args[2])
    if weight is None or (args[2] is not None and bias is None) or int(weight.shape[0]) != c:
        return False
    with gm.graph.inserting_before(conv):
        args[1] = _constant(gm, _dense(weight, int(args[6]))[perm], "shuffled_weight")
        args[2] = None if bias is None else _constant(gm, bias[perm], "shuffled_bias")
    args[6] = 1
    conv.args = tuple(args)
    _permute_chain(gm, chain, perm)
    return True


def _shuffle_into_consumer(gm: torch.fx.GraphModule, merge: torch.fx.Node, perm: torch.Tensor) -> bool:
    """Make the conv that reads the shuffled tensor (through per-channel ops) take it unshuffled."""
    aten = torch.ops.aten
    c = len(perm)
    chain, node = [], merge
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.args[0] is not node:
            return False
        params = _per_channel(gm, user, c)
        if params is None:
            break
        chain.append((user, params))
        node = user
    if len(node.users) != 1:
        return False
    conv = next(iter(node.users))
    if not (conv.op == "call_function" and conv.target is aten.conv2d.default and not conv.kwargs
            and conv.args[0] is node):
        return False
    args = _conv_args(conv)
    weight = _param_value(gm, args[1])
    if weight is None or int(weight.shape[1]) * int(args[6]) != c or (c > 1 and int(args[6]) == c):
        return False
    inverse = torch.argsort(perm)  # the tensors on the way hold x[i] where they held shuffled[inverse[i]]
    with gm.graph.inserting_before(conv):
        args[1] = _constant(gm, _dense(weight, int(args[6]))[:, inverse], "shuffled_weight")
    args[6] = 1
    conv.args = tuple(args)
    _permute_chain(gm, chain, inverse)
    return True


def _replace(gm: torch.fx.GraphModule, node: torch.fx.Node, build, *, inplace_arg: Any = None) -> None:
    """Insert ``build(graph)`` before ``node``, move its uses to the result and drop ``node``. For an
    in-place op (``inplace_arg`` = the tensor it mutated) later readers of that tensor move too."""
    with gm.graph.inserting_before(node):
        out = build(gm.graph)
    out.meta.update({k: node.meta[k] for k in ("val", "tensor_meta") if k in node.meta})  # later rewrites read shapes
    node.replace_all_uses_with(out)
    if isinstance(inplace_arg, torch.fx.Node):
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        for user in list(inplace_arg.users):
            if user is not out and order.get(user, -1) > order[node]:
                user.replace_input_with(inplace_arg, out)
    gm.graph.erase_node(node)


def _constant(gm: torch.fx.GraphModule, tensor: torch.Tensor, stem: str) -> torch.fx.Node:
    """A new constant (buffer) of ``gm`` as a get_attr node."""
    i = 0
    while hasattr(gm, f"_edgekit_{stem}_{i}"):
        i += 1
    name = f"_edgekit_{stem}_{i}"
    gm.register_buffer(name, tensor.detach().clone())
    return gm.graph.get_attr(name)


def _param_value(gm: torch.fx.GraphModule, node: Any) -> torch.Tensor | None:
    if isinstance(node, torch.fx.Node) and node.op == "get_attr":
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj.detach() if isinstance(obj, torch.Tensor) else None
    return None


def _hardswish_int8(gm: torch.fx.GraphModule) -> int:
    """``hardswish(x)`` -> ``x * (clamp(x/3, -1, 1) * 0.5 + 0.5)``, ``hardsigmoid`` -> the bracket.

    XNNPACK runs float HARD_SWISH but not the int8 one: each int8 HARD_SWISH falls back to the
    builtin kernel and cuts the delegated graph in two (FBNetV3-A at 64 px: 77 cuts, int8 0.6x the
    speed of fp32). The textbook ``x * relu6(x + 3) / 6`` is fused back into HARD_SWISH by the
    converter; this form (the same function: clamp(x+3, 0, 6)/6 = (clamp(x/3, -1, 1) + 1)/2) becomes
    MUL (+fused RELU_N1_TO_1), MUL, ADD, MUL: int8 XNNPACK ops."""
    aten = torch.ops.aten
    swishes = (aten.hardswish.default, aten.hardswish_.default)
    inplace = (aten.hardswish_.default, aten.hardsigmoid_.default)
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in swishes + (aten.hardsigmoid.default,
                                                                         aten.hardsigmoid_.default):
            continue
        x = node.args[0]
        swish = node.target in swishes

        def build(g, x=x, swish=swish):
            r = g.call_function(aten.clamp.default, (g.call_function(aten.mul.Tensor, (x, 1.0 / 3.0)), -1.0, 1.0))
            gate = g.call_function(aten.add.Tensor, (g.call_function(aten.mul.Tensor, (r, 0.5)), 0.5))
            return g.call_function(aten.mul.Tensor, (x, gate)) if swish else gate

        _replace(gm, node, build, inplace_arg=x if node.target in inplace else None)
        n += 1
    return n


def _prelu_int8(gm: torch.fx.GraphModule) -> int:
    """``prelu(x, a)`` with every slope 0 <= a < 1 -> ``a * x + relu((1 - a) * x)``.

    litert-torch lowers PReLU to RELU, MUL, MUL, SUB; that RELU reads a tensor with other users, so
    it stays a standalone int8 RELU, which XNNPACK does not take (ESPNetv2: 57 cuts of the delegated
    graph). Here the RELU is fused into the MUL before it (relu((1-a)x) = (1-a)relu(x) for 1-a > 0)."""
    aten = torch.ops.aten
    n = 0
    for node in list(gm.graph.nodes):
        a = _prelu_slopes(gm, node)
        x = node.args[0] if a is not None else None
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if a is None or val is None or val.dim() != 4:
            continue
        shape = (1, -1, 1, 1) if a.numel() > 1 else (1, 1, 1, 1)
        slope, keep = a.reshape(shape).float(), (1.0 - a).reshape(shape).float()

        def build(g, x=x, slope=slope, keep=keep):
            neg = g.call_function(aten.mul.Tensor, (x, _constant(gm, slope, "prelu_slope")))
            pos = g.call_function(aten.relu.default, (g.call_function(aten.mul.Tensor, (x, _constant(gm, keep, "prelu_keep"))),))
            return g.call_function(aten.add.Tensor, (neg, pos))

        _replace(gm, node, build)
        n += 1
    return n


def _prelu_slopes(gm: torch.fx.GraphModule, node: torch.fx.Node) -> torch.Tensor | None:
    """The slopes of a PReLU node when all are in [0, 1) (where relu((1-a)x) = (1-a)relu(x))."""
    aten = torch.ops.aten
    if node.op != "call_function" or node.target not in (aten.prelu.default, aten._prelu_kernel.default):
        return None
    a = _param_value(gm, node.args[1])
    return a.float() if a is not None and bool(((a >= 0) & (a < 1)).all()) else None


def _bn_prelu_int8(gm: torch.fx.GraphModule) -> int:
    """A BatchNorm that no conv precedes (ESPNet's BN + PReLU after a concat) -> 1x1 depthwise convs.

    After a conv the converter folds BN into it; elsewhere BN stays a MUL and an ADD, and the PReLU
    after it three more int8 elementwise ops. As ``relu(dw1x1((1-a)s, (1-a)t)) + dw1x1(a s, a t)``
    (BN scale s, shift t folded in) it is two int8 depthwise convs, one with a fused RELU, and an ADD;
    a BN alone becomes one depthwise conv."""
    aten = torch.ops.aten
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.batch_norm.default or node.args[5]:
            continue
        x = node.args[0]
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if val is None or val.dim() != 4 or (x.op == "call_function" and x.target in (aten.conv2d.default,
                                                                                       aten.convolution.default)):
            continue
        w, b, mean, var = (_param_value(gm, arg) for arg in node.args[1:5])
        if mean is None or var is None or (node.args[1] is not None and w is None) or \
                (node.args[2] is not None and b is None):
            continue
        c = int(val.shape[1])
        scale = (torch.ones(c) if w is None else w.float()) / torch.sqrt(var.float() + float(node.args[7]))
        shift = (torch.zeros(c) if b is None else b.float()) - mean.float() * scale
        users = list(node.users)
        slopes = _prelu_slopes(gm, users[0]) if len(users) == 1 else None
        if slopes is not None and slopes.numel() not in (1, c):
            slopes = None

        def dw(g, x, weight, bias):
            return g.call_function(aten.conv2d.default, (x, _constant(gm, weight.reshape(c, 1, 1, 1), "bn_weight"),
                                                         _constant(gm, bias, "bn_bias"), [1, 1], [0, 0], [1, 1], c))

        if slopes is None:
            _replace(gm, node, lambda g: dw(g, x, scale, shift))
        else:
            a = slopes.expand(c)
            prelu = users[0]

            def build(g, x=x, a=a):
                pos = g.call_function(aten.relu.default, (dw(g, x, (1 - a) * scale, (1 - a) * shift),))
                return g.call_function(aten.add.Tensor, (pos, dw(g, x, a * scale, a * shift)))

            _replace(gm, prelu, build)
            gm.graph.erase_node(node)
        n += 1
    return n


def _avg_pool_int8(gm: torch.fx.GraphModule) -> int:
    """``avg_pool2d`` (zero padding counted, floor mode) -> depthwise conv with weights 1/(kh*kw).

    XNNPACK's AVERAGE_POOL_2D is float-only, so every int8 one cuts the delegated graph (ESPNet's
    image pyramid, GhostNetV2's DFC attention); a depthwise conv computes the same numbers and is
    an int8 XNNPACK op (1/k^2 is exact in per-channel int8: 127 * scale)."""
    aten = torch.ops.aten
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.avg_pool2d.default:
            continue
        args = list(node.args) + [None] * (7 - len(node.args))
        x, kernel, stride, padding, ceil_mode, count_pad, divisor = args[:7]
        kw = node.kwargs
        ceil_mode = kw.get("ceil_mode", ceil_mode or False)
        count_pad = kw.get("count_include_pad", True if count_pad is None else count_pad)
        divisor = kw.get("divisor_override", divisor)
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        kernel = list(kernel) * (2 // len(kernel))
        stride = list(stride or kernel) * (2 // len(stride or kernel))
        padding = list(padding or [0]) * (2 // len(padding or [0]))
        if val is None or val.dim() != 4 or ceil_mode or divisor is not None or (any(padding) and not count_pad):
            continue
        c = int(val.shape[1])
        weight = torch.full((c, 1, kernel[0], kernel[1]), 1.0 / (kernel[0] * kernel[1]))

        def build(g, x=x, weight=weight, stride=stride, padding=padding, c=c):
            return g.call_function(aten.conv2d.default, (x, _constant(gm, weight, "avg_weight"),
                                                         _constant(gm, torch.zeros(c), "avg_bias"),
                                                         stride, padding, [1, 1], c))

        _replace(gm, node, build)
        n += 1
    return n


INT8_REWRITES = (_hardswish_int8, _bn_prelu_int8, _prelu_int8, _avg_pool_int8)
