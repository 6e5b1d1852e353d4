"""A JAX function → an ONNX graph, primitive by primitive, for the serving function (docs/deploy.md, "onnx").

The function is traced to a jaxpr at a fixed input shape. Every equation whose inputs are all constants (the
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
    return g.node('Reshape', [names()[0], _shape(g, out_aval.shape)])
  if prim == 'broadcast_in_dim':
    shape = list(out_aval.shape)
    ones = [1] * len(shape)
    for i, d in zip(range(eqn.invars[0].aval.ndim), p['broadcast_dimensions']):
      ones[d] = eqn.invars[0].aval.shape[i]
    x = g.node('Reshape', [names()[0], _shape(g, ones)])
    return g.node('Expand', [x, _shape(g, shape)])
  if prim == 'transpose':
    return g.node('Transpose', names(), perm=[int(d) for d in p['permutation']])
  if prim == 'slice':
    rank = len(p['start_indices'])
    steps = p['strides'] or (1,) * rank
    return g.node('Slice', [names()[0], _shape(g, p['start_indices']), _shape(g, p['limit_indices']),
                            _shape(g, range(rank)), _shape(g, steps)])
  if prim == 'rev':
    dims = list(p['dimensions'])
    return g.node('Slice', [names()[0], _shape(g, [-1] * len(dims)), _shape(g, [-2 ** 62] * len(dims)),
                            _shape(g, dims), _shape(g, [-1] * len(dims))])
  if prim == 'pad':
    cfg = p['padding_config']
    if any(int(i) != 0 for _, _, i in cfg) or min(min(int(lo), int(hi)) for lo, hi, _ in cfg) < 0:
      raise _Unsupported('interior or negative padding')
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


def _lower(g: _Graph, jaxpr, outer: str = '') -> None:
  for eqn in jaxpr.eqns:
    ins = [g.read(v) for v in eqn.invars]
    if all(isinstance(v, np.ndarray) for v in ins):
      for var, value in zip(eqn.outvars, _evaluate(eqn, ins)):
        g.env[var] = value
      continue
    inner = _INLINE.get(eqn.primitive.name)
    if inner is not None:
      closed = eqn.params[inner]
      sub = closed.jaxpr if hasattr(closed, 'jaxpr') else closed
      for var, value in zip(sub.constvars, getattr(closed, 'consts', ())):
        g.env[var] = np.asarray(value)
      for var, value in zip(sub.invars, ins):
        g.env[var] = value
      _lower(g, sub, _scope(eqn, outer))
      for var, inner_var in zip(eqn.outvars, sub.outvars):
        g.env[var] = g.read(inner_var)
      continue
    if eqn.primitive.name == 'reduce_window':  # lax.reduce_window with a traced init value
      g.env[eqn.outvars[0]] = _generic_reduce_window(g, eqn, ins, outer)
      continue
    if eqn.primitive.multiple_results:
      raise _error(eqn, 'several outputs', outer)
    try:
      g.env[eqn.outvars[0]] = _rule(g, eqn, ins)
    except _Unsupported as e:
      raise _error(eqn, str(e), outer) from None


def to_onnx(fn: Callable, spec: jax.ShapeDtypeStruct, input_name: str = 'images'):
  """The ONNX model of `fn(x)` for inputs of `spec` (fixed shape); its outputs are named by `fn`'s dict keys."""
  import onnx  # pylint: disable=g-import-not-at-top
  from onnx import helper  # pylint: disable=g-import-not-at-top
  closed, out_shapes = jax.make_jaxpr(fn, return_shape=True)(spec)
  keys = sorted(out_shapes)  # jax flattens a dict by its sorted keys
  g = _Graph()
  for var, value in zip(closed.jaxpr.constvars, closed.consts):
    g.env[var] = np.asarray(value)
  g.env[closed.jaxpr.invars[0]] = input_name
  _lower(g, closed.jaxpr)
  outputs = []
  for key, var in zip(keys, closed.jaxpr.outvars):
    g.nodes.append(helper.make_node('Identity', [g.name(var)], [key]))
    aval = var.aval
    outputs.append(helper.make_tensor_value_info(key, helper.np_dtype_to_tensor_dtype(np.dtype(aval.dtype)),
                                                 list(aval.shape)))
  inputs = [helper.make_tensor_value_info(input_name, helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype)),
                                          list(spec.shape))]
  graph = helper.make_graph(g.nodes, 'gcad_serving', inputs, outputs, initializer=g.inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)], producer_name='gcad_jax')
  model.ir_version = 8
  onnx.checker.check_model(model)
  return model
