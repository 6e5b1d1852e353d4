"""A JAX function → an ONNX graph, primitive by primitive, for the serving function (docs/deploy.md, "onnx").

The function is traced to a jaxpr at the input shape (at two batch sizes for a dynamic batch). Every equation whose inputs are all constants (the
weights, the μ/σ, the resize kernels) is evaluated here and becomes an initializer; every other equation is
written as ONNX operators (opset 18) that compute the same values. Only the primitives the GCAD serving function
uses have rules; any other primitive, or a variant of one that ONNX has no operator for, raises `FormatError`
naming the primitive and the layer (the flax module path) it comes from: no model is ever approximated.
"""

from __future__ import annotations

import string
from typing import Any, Callable

import jax
import numpy as np

OPSET = 18


class FormatError(ValueError):
  """The model holds a layer or primitive that a format cannot express."""


class _Graph:
  """The ONNX nodes and initializers being written, and the jaxpr variable → value/name map."""

  def __init__(self):
    from onnx import helper, numpy_helper  # pylint: disable=g-import-not-at-top
    self.helper, self.numpy_helper = helper, numpy_helper
    self.nodes, self.inits, self.env, self.count = [], [], {}, 0
    # A dynamic batch: the function traced at two batch sizes, every variable of the first trace paired with
    # the second's; a dimension d(B) = a·B + c becomes a runtime shape from the input's batch.
    self.batches, self.pair, self.eqn_b, self.batch = None, {}, None, None

  def fresh(self, hint: str = 't') -> str:
    self.count += 1
    return f'{hint}_{self.count}'

  def const(self, value: Any, dtype=None) -> str:
    name = self.fresh('c')
    self.inits.append(self.numpy_helper.from_array(np.asarray(value, dtype), name))
    return name

  def node(self, op: str, inputs, **attrs) -> str:
    out = self.fresh(op.lower())
    self.nodes.append(self.helper.make_node(op, list(inputs), [out], **attrs))
    return out

  def read(self, var) -> Any:
    """A jaxpr atom: its constant value (np.ndarray) or its ONNX tensor name (str)."""
    if hasattr(var, 'val'):  # a Literal
      return np.asarray(var.val, var.aval.dtype)
    return self.env[var]

  def name(self, var) -> str:
    value = self.read(var)
    return self.const(value) if isinstance(value, np.ndarray) else value

  def linear(self, a_values, b_values) -> list[tuple[int, int]]:
    """(a, c) per entry, with value = a·batch + c, from the entries at the two traced batch sizes."""
    if self.batches is None:
      return [(0, int(v)) for v in a_values]
    (ba, bb), out = self.batches, []
    for va, vb in zip(a_values, b_values):
      a, rest = divmod(int(vb) - int(va), bb - ba)
      if rest:
        raise _Unsupported(f'a size {va}, {vb} at batch {ba}, {bb} that is not linear in the batch')
      out.append((a, int(va) - a * ba))
    return out

  def dims(self, var) -> list[tuple[int, int]]:
    shape = var.aval.shape
    return self.linear(shape, self.pair[var].aval.shape if self.batches and var in self.pair else shape)

  def shape(self, dims: list[tuple[int, int]]) -> str:
    """An int64 shape tensor: a constant, or built from the input's batch where a size depends on it."""
    if all(a == 0 for a, _ in dims):
      return self.const(np.asarray([c for _, c in dims], np.int64))
    parts = []
    for a, c in dims:
      if a == 0:
        parts.append(self.const(np.asarray([c], np.int64)))
        continue
      part = self.batch if a == 1 else self.node('Mul', [self.batch, self.const(np.asarray([a], np.int64))])
      parts.append(part if c == 0 else self.node('Add', [part, self.const(np.asarray([c], np.int64))]))
    return self.node('Concat', parts, axis=0)


def _scope(eqn, outer: str = '') -> str:
  """The layer an equation belongs to: its name stack (flax module path) under the enclosing calls'."""
  return '/'.join(s for s in (outer, str(eqn.source_info.name_stack)) if s)


class _Unsupported(Exception):
  """Raised by a rule: why the equation has no ONNX form (`_lower` adds the primitive and the layer)."""


def _error(eqn, why: str, outer: str = '') -> FormatError:
  layer = _scope(eqn, outer) or 'outside any flax module'
  return FormatError(f'onnx: cannot export the primitive {eqn.primitive.name} ({why}) in layer {layer}; '
                     'the other formats (stablehlo, saved_model) hold every primitive')


_ELEMENTWISE = {'add': 'Add', 'sub': 'Sub', 'mul': 'Mul', 'div': 'Div', 'max': 'Max', 'min': 'Min',
                'abs': 'Abs', 'sqrt': 'Sqrt', 'neg': 'Neg', 'exp': 'Exp', 'log': 'Log', 'floor': 'Floor',
                'ceil': 'Ceil', 'tanh': 'Tanh', 'ge': 'GreaterOrEqual', 'gt': 'Greater', 'le': 'LessOrEqual',
                'lt': 'Less', 'eq': 'Equal', 'and': 'And', 'or': 'Or', 'not': 'Not', 'logistic': 'Sigmoid'}
_IDENTITY = ('stop_gradient', 'copy', 'copy_p', 'optimization_barrier')
_INLINE = {'jit': 'jaxpr', 'pjit': 'jaxpr', 'custom_jvp_call': 'call_jaxpr', 'custom_vjp_call': 'call_jaxpr',
           'remat': 'jaxpr', 'checkpoint': 'jaxpr', 'closed_call': 'call_jaxpr'}


def _nchw(g: _Graph, x: str, spec) -> str:
  return g.node('Transpose', [x], perm=[int(d) for d in spec])


def _from_nchw(g: _Graph, y: str, spec) -> str:
  inverse = [0] * len(spec)
  for i, d in enumerate(spec):
    inverse[int(d)] = i
  return g.node('Transpose', [y], perm=inverse)


def _conv(g: _Graph, eqn, ins) -> str:
  p = eqn.params
  if any(d != 1 for d in p['lhs_dilation']) or p['batch_group_count'] != 1:
    raise _Unsupported('input dilation or batch groups')
  lo, hi = zip(*p['padding'])
  if min(lo + hi) < 0:
    raise _Unsupported('negative padding')
  pads = [int(v) for v in lo] + [int(v) for v in hi]
  dn = p['dimension_numbers']
  x = _nchw(g, g.name(eqn.invars[0]), dn.lhs_spec)
  kernel = ins[1]
  w = (g.const(np.transpose(kernel, dn.rhs_spec)) if isinstance(kernel, np.ndarray)
       else _nchw(g, kernel, dn.rhs_spec))
  y = g.node('Conv', [x, w], strides=list(p['window_strides']), pads=pads,
             dilations=list(p['rhs_dilation']), group=int(p['feature_group_count']))
  return _from_nchw(g, y, dn.out_spec)


def _reduce_window(g: _Graph, eqn, kind: str) -> str:
  """reduce_window_sum / _max over the spatial dims of a (batch, channel, spatial...) tensor."""
  p, shape = eqn.params, eqn.invars[0].aval.shape
  if any(d != 1 for d in p['base_dilation']):
    raise _Unsupported('base dilation')
  plain = [i for i in range(len(shape)) if p['window_dimensions'][i] == 1 and p['window_strides'][i] == 1
           and tuple(p['padding'][i]) == (0, 0)]
  if len(plain) < 2:
    raise _Unsupported('a window over the batch or channel dimension')
  n, c = plain[0], plain[-1]
  spatial = [i for i in range(len(shape)) if i not in (n, c)]
  spec = [n, c, *spatial]
  x = _nchw(g, g.name(eqn.invars[0]), spec)
  attrs = {'strides': [int(p['window_strides'][i]) for i in spatial],
           'pads': [int(p['padding'][i][0]) for i in spatial] + [int(p['padding'][i][1]) for i in spatial],
           'dilations': [int(p['window_dilation'][i]) for i in spatial]}
  window = [int(p['window_dimensions'][i]) for i in spatial]
  if kind == 'max':
    y = g.node('MaxPool', [x], kernel_shape=window, **attrs)
  else:  # a depthwise convolution with a kernel of ones: the window sums
    ones = g.const(np.ones((shape[c], 1, *window), eqn.invars[0].aval.dtype))
    y = g.node('Conv', [x, ones], group=int(shape[c]), **attrs)
  return _from_nchw(g, y, spec)


def _generic_reduce_window(g: _Graph, eqn, ins, outer: str) -> str:
  """reduce_window of one operand whose computation is max with init −∞ (a max-pool) or add with init 0."""
  computation = eqn.params['jaxpr']
  body = [e.primitive.name for e in getattr(computation, 'jaxpr', computation).eqns]
  init = ins[1] if len(ins) == 2 else None
  kinds = {('max', -np.inf): 'max', ('add', 0.0): 'sum'}
  kind = None
  if len(body) == 1 and isinstance(init, np.ndarray) and init.size == 1:
    kind = kinds.get((body[0], float(init)))
  if kind is None:
    raise _error(eqn, f'computation {body} with init {init}: only max from -inf or add from 0', outer)
  try:
    return _reduce_window(g, eqn, kind)
  except _Unsupported as e:
    raise _error(eqn, str(e), outer) from None


def _dot_general(g: _Graph, eqn) -> str:
  (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
  a, b = eqn.invars[0].aval.ndim, eqn.invars[1].aval.ndim
  letters = iter(string.ascii_letters)
  left = [next(letters) for _ in range(a)]
  right = [None] * b
  for i, j in zip(lb, rb):
    right[j] = left[i]
  for i, j in zip(lc, rc):
    right[j] = left[i]
  right = [r or next(letters) for r in right]
  out = ([left[i] for i in lb] + [left[i] for i in range(a) if i not in lb and i not in lc]
         + [right[j] for j in range(b) if j not in rb and j not in rc])
  equation = f'{"".join(left)},{"".join(right)}->{"".join(out)}'
  return g.node('Einsum', [g.name(eqn.invars[0]), g.name(eqn.invars[1])], equation=equation)


def _shape(g: _Graph, shape) -> str:
  return g.const(np.asarray(shape, np.int64))


def _rule(g: _Graph, eqn, ins) -> str:
  """The ONNX tensor of one equation's (single) output."""
  prim, p = eqn.primitive.name, eqn.params
  names = lambda: [g.name(v) for v in eqn.invars]
  out_aval = eqn.outvars[0].aval
  if prim in _ELEMENTWISE:
    if prim in ('and', 'or', 'not') and eqn.invars[0].aval.dtype != np.bool_:
      raise _Unsupported('bitwise on integers')
    return g.node(_ELEMENTWISE[prim], names())
  if prim == 'ne':
    return g.node('Not', [g.node('Equal', names())])
  if prim in _IDENTITY:
    return g.node('Identity', names()[:1])
  if prim == 'square':
    x = names()[0]
    return g.node('Mul', [x, x])
  if prim == 'integer_pow':
    return g.node('Pow', [names()[0], g.const(np.asarray(p['y'], out_aval.dtype))])
  if prim == 'round':
    if int(p['rounding_method']) != 1:
      raise _Unsupported('rounding half away from zero (ONNX Round rounds half to even)')
    return g.node('Round', names())
  if prim == 'convert_element_type':
    from onnx import helper  # pylint: disable=g-import-not-at-top
    to = helper.np_dtype_to_tensor_dtype(np.dtype(p['new_dtype']))
    return g.node('Cast', names(), to=int(to))
  if prim == 'select_n':
    if len(eqn.invars) != 3 or eqn.invars[0].aval.dtype != np.bool_:
      raise _Unsupported('more than two cases or an integer selector')
    pred, false, true = names()
    return g.node('Where', [pred, true, false])
  if prim == 'clamp':
    lo, x, hi = names()
    return g.node('Max', [g.node('Min', [x, hi]), lo])
  if prim in ('reshape', 'squeeze', 'expand_dims'):
    if prim == 'reshape' and p.get('dimensions') is not None:
      raise _Unsupported('reshape with a dimension order')
    return g.node('Reshape', [names()[0], g.shape(g.dims(eqn.outvars[0]))])
  if prim == 'broadcast_in_dim':
    shape = g.dims(eqn.outvars[0])
    ones = [(0, 1)] * len(shape)
    for d, dim in zip(p['broadcast_dimensions'], g.dims(eqn.invars[0]) if not hasattr(eqn.invars[0], 'val')
                      else [(0, s) for s in eqn.invars[0].aval.shape]):
      ones[d] = dim
    x = g.node('Reshape', [names()[0], g.shape(ones)])
    return g.node('Expand', [x, g.shape(shape)])
  if prim == 'transpose':
    return g.node('Transpose', names(), perm=[int(d) for d in p['permutation']])
  if prim == 'slice':
    rank = len(p['start_indices'])
    steps = p['strides'] or (1,) * rank
    pb = g.eqn_b.params if g.eqn_b is not None else p
    starts = g.shape(g.linear(p['start_indices'], pb['start_indices']))
    limits = g.shape(g.linear(p['limit_indices'], pb['limit_indices']))
    return g.node('Slice', [names()[0], starts, limits, _shape(g, range(rank)), _shape(g, steps)])
  if prim == 'rev':
    dims = list(p['dimensions'])
    return g.node('Slice', [names()[0], _shape(g, [-1] * len(dims)), _shape(g, [-2 ** 62] * len(dims)),
                            _shape(g, dims), _shape(g, [-1] * len(dims))])
  if prim == 'pad':
    cfg = p['padding_config']
    if any(int(i) != 0 for _, _, i in cfg) or min(min(int(lo), int(hi)) for lo, hi, _ in cfg) < 0:
      raise _Unsupported('interior or negative padding')
    if g.eqn_b is not None and g.eqn_b.params['padding_config'] != cfg:
      raise _Unsupported('padding that depends on the batch')
    x, value = names()
    pads = [int(lo) for lo, _, _ in cfg] + [int(hi) for _, hi, _ in cfg]
    return g.node('Pad', [x, _shape(g, pads), value], mode='constant')
  if prim == 'concatenate':
    return g.node('Concat', names(), axis=int(p['dimension']))
  if prim == 'stack':
    axis = int(p['axis'])
    return g.node('Concat', [g.node('Unsqueeze', [n, _shape(g, [axis])]) for n in names()], axis=axis)
  if prim in ('reduce_sum', 'reduce_max', 'reduce_min'):
    op = {'reduce_sum': 'ReduceSum', 'reduce_max': 'ReduceMax', 'reduce_min': 'ReduceMin'}[prim]
    return g.node(op, [names()[0], _shape(g, p['axes'])], keepdims=0)
  if prim == 'conv_general_dilated':
    return _conv(g, eqn, ins)
  if prim in ('reduce_window_sum', 'reduce_window_max'):
    return _reduce_window(g, eqn, prim.rsplit('_', 1)[1])
  if prim == 'dot_general':
    return _dot_general(g, eqn)
  raise _Unsupported('no ONNX rule for it')


def _evaluate(eqn, values):
  """An equation on constant inputs, evaluated now (constant folding)."""
  out = eqn.primitive.bind(*values, **eqn.params)
  return [np.asarray(o) for o in (out if eqn.primitive.multiple_results else [out])]


def _fold(g: _Graph, eqn, eqn_b, ins, outer: str) -> None:
  """Constant folding; with two traces, a constant whose shape depends on the batch is refused."""
  outs = _evaluate(eqn, ins)
  for var, value in zip(eqn.outvars, outs):
    g.env[var] = value
  if eqn_b is None:
    return
  ins_b = [g.read(v) for v in eqn_b.invars]
  outs_b = _evaluate(eqn_b, ins_b) if all(isinstance(v, np.ndarray) for v in ins_b) else None
  if outs_b is None or [o.shape for o in outs_b] != [o.shape for o in outs]:
    raise _error(eqn, 'a constant whose shape depends on the batch; export with --batch N', outer)
  for var, value in zip(eqn_b.outvars, outs_b):
    g.env[var] = value


def _lower(g: _Graph, jaxpr, outer: str = '', jaxpr_b=None) -> None:
  """Writes the equations of `jaxpr` (and pairs them with `jaxpr_b`'s, the same function at another batch)."""
  eqns_b = list(jaxpr_b.eqns) if jaxpr_b is not None else [None] * len(jaxpr.eqns)
  if len(eqns_b) != len(jaxpr.eqns):
    raise FormatError(f'onnx: the function traces to different programs at two batch sizes ({outer or "top"}); '
                      'export with --batch N')
  for eqn, eqn_b in zip(jaxpr.eqns, eqns_b):
    if eqn_b is not None and eqn_b.primitive is not eqn.primitive:
      raise _error(eqn, 'the function traces differently at two batch sizes; export with --batch N', outer)
    ins = [g.read(v) for v in eqn.invars]
    if all(isinstance(v, np.ndarray) for v in ins):
      _fold(g, eqn, eqn_b, ins, outer)
      continue
    if eqn_b is not None:
      g.pair.update(zip(eqn.outvars, eqn_b.outvars))
    inner = _INLINE.get(eqn.primitive.name)
    if inner is not None:
      traces = [(eqn, eqn.params[inner], ins)]
      if eqn_b is not None:
        traces.append((eqn_b, eqn_b.params[inner], [g.read(v) for v in eqn_b.invars]))
      subs = []
      for _, closed, values in traces:
        sub = closed.jaxpr if hasattr(closed, 'jaxpr') else closed
        for var, value in zip(sub.constvars, getattr(closed, 'consts', ())):
          g.env[var] = np.asarray(value)
        for var, value in zip(sub.invars, values):
          g.env[var] = value
        subs.append(sub)
      if eqn_b is not None:
        g.pair.update(zip(subs[0].invars, subs[1].invars))
      _lower(g, subs[0], _scope(eqn, outer), subs[1] if eqn_b is not None else None)
      for (e, _, _), sub in zip(traces, subs):
        for var, inner_var in zip(e.outvars, sub.outvars):
          g.env[var] = g.read(inner_var)
      continue
    g.eqn_b = eqn_b
    if any(v.aval.dtype == jax.numpy.bfloat16 for v in eqn.outvars):
      raise _error(eqn, 'bfloat16 compute (config.model.dtype): ONNX Runtime\'s CPU kernels take float32', outer)
    if eqn.primitive.name == 'reduce_window':  # lax.reduce_window with a traced init value
      out = _generic_reduce_window(g, eqn, ins, outer)
    elif eqn.primitive.multiple_results:
      raise _error(eqn, 'several outputs', outer)
    else:
      try:
        out = _rule(g, eqn, ins)
      except _Unsupported as e:
        raise _error(eqn, str(e), outer) from None
    g.env[eqn.outvars[0]] = out
    if eqn_b is not None:
      g.env[eqn_b.outvars[0]] = out


def to_onnx(fn: Callable, spec: jax.ShapeDtypeStruct, input_name: str = 'images', dynamic_batch: bool = False):
  """The ONNX model of `fn(x)` for inputs of `spec`; its outputs are named by `fn`'s dict keys.

  `dynamic_batch`: the input's first dimension is left free ('batch'): the function is traced at batch 2 and
  3, and every size that differs between the two traces is computed from the input's batch at run time.
  """
  import onnx  # pylint: disable=g-import-not-at-top
  from onnx import helper  # pylint: disable=g-import-not-at-top
  g = _Graph()
  batches = (2, 3) if dynamic_batch else (spec.shape[0],)
  traces = [jax.make_jaxpr(fn, return_shape=True)(jax.ShapeDtypeStruct((b, *spec.shape[1:]), spec.dtype))
            for b in batches]
  (closed, out_shapes), jaxprs = traces[0], [t[0] for t in traces]
  keys = sorted(out_shapes)  # jax flattens a dict by its sorted keys
  for c in jaxprs:
    for var, value in zip(c.jaxpr.constvars, c.consts):
      g.env[var] = np.asarray(value)
    g.env[c.jaxpr.invars[0]] = input_name
  if dynamic_batch:
    g.batches = batches
    g.pair.update(zip(jaxprs[0].jaxpr.invars, jaxprs[1].jaxpr.invars))
    g.batch = g.node('Slice', [g.node('Shape', [input_name]), g.const(np.asarray([0], np.int64)),
                               g.const(np.asarray([1], np.int64))])
  try:
    _lower(g, closed.jaxpr, '', jaxprs[1].jaxpr if dynamic_batch else None)
  except _Unsupported as e:
    raise FormatError(f'onnx: {e}') from None
  if dynamic_batch:
    g.pair.update((a, b) for a, b in zip(closed.jaxpr.outvars, jaxprs[1].jaxpr.outvars) if not hasattr(a, 'val'))
  outputs = []
  for key, var in zip(keys, closed.jaxpr.outvars):
    g.nodes.append(helper.make_node('Identity', [g.name(var)], [key]))
    dims = g.dims(var) if not hasattr(var, 'val') and var in g.pair else [(0, d) for d in var.aval.shape]
    shape = ['batch' if (a, c) == (1, 0) else (None if a else c) for a, c in dims]
    outputs.append(helper.make_tensor_value_info(key, helper.np_dtype_to_tensor_dtype(np.dtype(var.aval.dtype)),
                                                 shape))
  first = 'batch' if dynamic_batch else spec.shape[0]
  inputs = [helper.make_tensor_value_info(input_name, helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype)),
                                          [first, *spec.shape[1:]])]
  graph = helper.make_graph(g.nodes, 'gcad_serving', inputs, outputs, initializer=g.inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)], producer_name='gcad_jax')
  model.ir_version = 8
  onnx.checker.check_model(model)
  return model
