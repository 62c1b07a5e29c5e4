"""Autograd kernels of the library's ops, with ``torch.library.register_autograd``'s contract and
less of its host time.

``setup_context(ctx, inputs, output)`` sees every positional input (defaults filled in) and
``backward(ctx, *grads)`` returns one gradient per input, as with torch's. Why not torch's: its
kernel calls ``torch._library.utils.fill_defaults`` on every differentiable call, which reads
``schema.arguments`` (a fresh list of pybind objects) once per argument, quadratic in their number:
32 us of the 58 us an implicit GEMM (12 arguments) cost on the host under grad, 12 us of a
7-argument conv (``python -m pointsparse.bench host``). Here the defaults are read from the schema
once, at registration.
"""

from typing import Callable, Tuple

import torch


def register_autograd(qualname: str, backward: Callable, setup_context: Callable) -> None:
    """Registers the Autograd kernel of ``qualname`` (``"namespace::name"``, a functional op with no
    keyword-only arguments): the op runs below autograd and, when an input requires a gradient, is
    recorded as one node whose backward is ``backward``."""
    op = torch._library.utils.lookup_op(qualname)
    schema = op._schema
    arguments = schema.arguments
    if (any(a.kwarg_only for a in arguments) or not torch._library.utils.is_functional_schema(schema)
            or any(torch._library.utils.is_tensorlist_like_type(a.type) for a in (*arguments, *schema.returns))):
        # (a tensor inside a list would get no gradient: torch's own kernel flattens lists for that)
        raise NotImplementedError(f"{qualname}: only functional ops with positional arguments and no tensor "
                                  f"lists, got {schema}")
    defaults = tuple(a.default_value for a in arguments)
    after_autograd = torch._C._after_autograd_keyset

    def run_below_autograd(keyset, args: Tuple):
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & after_autograd, *args)

    def forward(ctx, *args_and_keyset):
        *args, keyset = args_and_keyset
        output = run_below_autograd(keyset, args)
        # The dispatcher drops trailing arguments equal to their defaults; setup_context sees them all.
        setup_context(ctx, (*args, *defaults[len(args):]), output)
        return output

    def backward_without_keyset(ctx, *grads):
        needs_input_grad = ctx.needs_input_grad
        ctx.needs_input_grad = needs_input_grad[:-1]
        try:
            grad_inputs = backward(ctx, *grads)
        finally:
            ctx.needs_input_grad = needs_input_grad
        num_inputs = len(needs_input_grad) - 1
        if not isinstance(grad_inputs, tuple):  # one input's gradient, or None
            grad_inputs = (grad_inputs,)
        if len(grad_inputs) not in (num_inputs, len(defaults)):
            raise RuntimeError(f"the backward of {qualname} must return a tuple with one gradient per input "
                               f"({num_inputs}), got {grad_inputs!r:.200}")
        if any(g is not None for g in grad_inputs[num_inputs:]):
            raise RuntimeError(f"the backward of {qualname} returned a gradient for a defaulted input "
                               "that was not passed")
        return (*grad_inputs[:num_inputs], None)

    function = type(f"Backward_{qualname.replace('::', '_')}", (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward_without_keyset)})

    def autograd_kernel(keyset, *args):
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            return function.apply(*args, keyset)
        return run_below_autograd(keyset, args)

    namespace, name = qualname.split("::")
    library = torch.library.Library(namespace, "FRAGMENT")
    library.impl(name, autograd_kernel, "Autograd", with_keyset=True)
    _KEEP_ALIVE.append(library)  # a registration lasts as long as its library


_KEEP_ALIVE = []
