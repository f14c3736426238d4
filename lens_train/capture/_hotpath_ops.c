/* Handler: the recorder's instance ``__torch_function__`` for one capture (Recorder.__enter__).
 *
 * It does what Recorder.__torch_function__ does for metadata reads and for a classified op
 * that is not in place and returns a tensor or a tuple or list of tensors; for anything else
 * it calls that Python method (``fallback``), so every rare case has one implementation.
 */
#include "_hotpath.h"

#ifdef _WIN32
#include <windows.h>
static double now(void) {
    LARGE_INTEGER c, f;
    QueryPerformanceCounter(&c);
    QueryPerformanceFrequency(&f);
    return (double)c.QuadPart / (double)f.QuadPart;
}
#else
#include <time.h>
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
#endif


enum { KIND_OP = 0, KIND_METADATA = 2 };
enum { RECORD_ARGS = 14 };

typedef struct {
    PyObject_HEAD
    PyObject *recorder;      /* the mode: torch checks handler.__self__ is the mode */
    PyObject *fallback;      /* Recorder.__torch_function__ bound to the recorder */
    PyObject *link;          /* recorder._link(t, pos, parents, params) */
    PyObject *note_failure;  /* recorder._note_failure(exc, func, names, parents, params) */
    PyObject *record_outputs;/* recorder._record_outputs(func, names, args, kwargs, result, parents, params, elapsed) */
    PyObject *classified;    /* calls.CLASSIFIED: func -> (name, layer type, kind) */
    PyObject *owner;         /* id(tensor) -> OpRecord */
    PyObject *records;       /* the recorder's record list */
    PyObject *codes;         /* id(code) -> code, of the walked frames */
    PyObject *above;         /* id(frame) -> (frame, walk above): open module calls */
    PyObject *stop;          /* the code object where call-site walks stop */
    PyObject *tracker;       /* the module tracker (its .stack) */
    PyObject *pending;       /* the recorder's pending Python conditions (the Python path starts their branches) */
    PyObject *unindexed;     /* saved values not yet filed by storage */
    PyObject *record_type;   /* OpRecord */
    PyObject *tensor_type;
    PyObject *param_type;
    PyObject *save_set;      /* None, or the record indices to save */
    PyObject *postfunc;      /* None, or fn(value) -> transformed activation */
    PyObject *sink;          /* None, or fn(record) */
    PyObject *template_fn;   /* None, or fn(args, kwargs) -> call template (replayable captures) */
    PyObject *context_fn;    /* None, or fn() -> grad mode and autocast regions, with templates */
    PyObject *rng_fn;        /* None, or fn() -> random-number states */
    PyObject *record_proto;  /* None, or an OpRecord its __init__ made: the defaults of new records (see hp_make) */
    PyObject *record_init;   /* the names of OpRecord.__init__'s first RECORD_ARGS arguments */
    HpMaker maker;           /* makes new records */
    HpTensorGetters getters; /* torch.Tensor's metadata getters, called directly */
    int expect_grad;         /* the last record's tensor required grad: read its grad_fn first */
    int save_all;
    int detach;              /* saved values are detached (not train mode) */
    int save_raw;
} Handler;

static PyObject *fallback(Handler *h, PyObject *args, PyObject *kw) {
    return PyObject_Call(h->fallback, args, kw);
}

/* Whether an OP-kind call is the common case by its names and keywords (else: the Python path). */
static int common_call(PyObject *name, PyObject *layer_type, PyObject *kwargs) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(name);
    if (n > 0 && PyUnicode_READ_CHAR(name, n - 1) == '_') {
        if (!(n > 1 && PyUnicode_READ_CHAR(name, n - 2) == '_'))
            return 0; /* add_, relu_ ...: in place */
        if (PyUnicode_Compare(name, s_setitem) == 0)
            return 0;
    }
    if (PyUnicode_Compare(layer_type, s_batchnorm) == 0 || PyUnicode_Compare(layer_type, s_instancenorm) == 0)
        return 0; /* they update buffers inside the kernel */
    if (kwargs != NULL) {
        PyObject *v = PyDict_GetItemWithError(kwargs, s_inplace);
        if (v == Py_True)
            return 0;
        if (v == NULL && PyErr_Occurred())
            return -1;
        int has_out = PyDict_Contains(kwargs, s_out);
        if (has_out != 0)
            return has_out < 0 ? -1 : 0;
    }
    return 1;
}

/* Append (record index, pos) when t is the current value of a tensor recorded here: 1; not: 0; error: -1. */
static int known_parent(Handler *h, PyObject *t, PyObject *pos, PyObject *parents, int *missing) {
    PyObject *key = PyLong_FromVoidPtr(t);
    if (key == NULL)
        return -1;
    PyObject *rec = PyDict_GetItemWithError(h->owner, key);
    Py_DECREF(key);
    *missing = rec == NULL;
    if (rec == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(rec);
    int ok = 0;
    PyObject *framework = NULL, *version = NULL, *current = NULL, *index = NULL;
    PyObject *live = hp_live(rec);
    if (live == NULL)
        goto done;
    if (live != t) {
        *missing = 1; /* a dead tensor's id, reused */
        ok = 0;
        goto done;
    }
    framework = hp_rget(rec, R_FRAMEWORK);
    if (framework == NULL)
        goto done;
    int fw = PyObject_IsTrue(framework);
    if (fw != 0) {
        ok = fw < 0 ? -1 : 0;
        goto done;
    }
    version = hp_rget(rec, R_VERSION);
    current = version ? PyObject_GetAttr(t, s_version) : NULL;
    if (current == NULL)
        goto done;
    int same = PyObject_RichCompareBool(version, current, Py_EQ);
    if (same <= 0) {
        ok = same;
        goto done;
    }
    index = hp_rget(rec, R_INDEX);
    if (index == NULL)
        goto done;
    PyObject *pair = PyTuple_Pack(2, index, pos);
    if (pair == NULL)
        goto done;
    ok = PyList_Append(parents, pair) < 0 ? -1 : 1;
    Py_DECREF(pair);
done:
    if (ok == 0 && PyErr_Occurred())
        ok = -1;
    Py_XDECREF(index);
    Py_XDECREF(current);
    Py_XDECREF(version);
    Py_XDECREF(framework);
    Py_XDECREF(live);
    Py_DECREF(rec);
    return ok;
}

/* One tensor argument: as Recorder._parents / _link file it. */
static int add_parent(Handler *h, PyObject *t, PyObject *pos, PyObject *parents, PyObject *params) {
    int missing = 0;
    int found = known_parent(h, t, pos, parents, &missing);
    if (found != 0)
        return found < 0 ? -1 : 0;
    if (missing && PyObject_TypeCheck(t, (PyTypeObject *)h->param_type)) {
        PyObject *id = PyLong_FromVoidPtr(t);
        if (id == NULL)
            return -1;
        int r = PyList_Append(params, id);
        Py_DECREF(id);
        return r;
    }
    PyObject *r = PyObject_CallFunctionObjArgs(h->link, t, pos, parents, params, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int collect_parents(Handler *h, PyObject *args, PyObject *kwargs, PyObject *parents, PyObject *params) {
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PyTuple_GET_ITEM(args, i);
        if (PyObject_TypeCheck(a, (PyTypeObject *)h->tensor_type)) {
            PyObject *pos = PyLong_FromSsize_t(i);
            int r = pos ? add_parent(h, a, pos, parents, params) : -1;
            Py_XDECREF(pos);
            if (r < 0)
                return -1;
        } else if (PyList_Check(a) || PyTuple_Check(a)) {
            PyObject *seq = PySequence_Fast(a, "");
            if (seq == NULL)
                return -1;
            Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
            for (Py_ssize_t j = 0; j < m; j++) {
                PyObject *b = PySequence_Fast_GET_ITEM(seq, j);
                if (!PyObject_TypeCheck(b, (PyTypeObject *)h->tensor_type))
                    continue;
                PyObject *pos = Py_BuildValue("(nn)", i, j);
                int r = pos ? add_parent(h, b, pos, parents, params) : -1;
                Py_XDECREF(pos);
                if (r < 0) {
                    Py_DECREF(seq);
                    return -1;
                }
            }
            Py_DECREF(seq);
        }
    }
    if (kwargs != NULL) {
        PyObject *key, *value;
        Py_ssize_t it = 0;
        while (PyDict_Next(kwargs, &it, &key, &value)) {
            if (PyObject_TypeCheck(value, (PyTypeObject *)h->tensor_type) && add_parent(h, value, key, parents, params) < 0)
                return -1;
        }
    }
    return 0;
}

/* grad_fn type -> its name: one string per type (PyType_GetName makes a new one for a static type each time) */
static PyObject *grad_fn_names;

/* grad_fn's type name, or NULL with no error when there is none (autograd refuses some no_grad views). */
static PyObject *grad_fn_name(const HpTensorGetters *g, PyObject *t) {
    PyObject *fn = hp_tensor_attr(g, t, T_GRAD_FN);
    if (fn == NULL) {
        if (PyErr_ExceptionMatches(PyExc_RuntimeError))
            PyErr_Clear();
        return NULL;
    }
    PyObject *name = NULL;
    if (fn != Py_None) {
        PyObject *type = (PyObject *)Py_TYPE(fn);
        name = Py_XNewRef(PyDict_GetItemWithError(grad_fn_names, type));
        if (name == NULL && !PyErr_Occurred() && (name = PyType_GetName(Py_TYPE(fn))) != NULL) {
            if (PyDict_GET_SIZE(grad_fn_names) >= 4096) /* types made at run time (autograd.Function subclasses) */
                PyDict_Clear(grad_fn_names);
            if (PyDict_SetItem(grad_fn_names, type, name) < 0)
                Py_CLEAR(name);
        }
    }
    Py_DECREF(fn);
    return name;
}

static int save(Handler *h, PyObject *rec, PyObject *t, PyObject *index) {
    if (!h->save_all) {
        if (h->save_set == Py_None)
            return 0;
        int chosen = PySequence_Contains(h->save_set, index);
        if (chosen <= 0)
            return chosen;
    }
    PyObject *value = h->detach ? PyObject_CallMethodNoArgs(t, s_detach) : Py_NewRef(t);
    if (value == NULL)
        return -1;
    int r = 0;
    if (h->postfunc != Py_None)
        r = hp_rset(rec, R_TRANSFORMED, PyObject_CallOneArg(h->postfunc, value));
    if (r == 0 && h->save_raw) {
        r = hp_rset(rec, R_ACTIVATION, Py_NewRef(value));
        if (r == 0)
            r = PyList_Append(h->unindexed, rec);
    }
    Py_DECREF(value);
    return r;
}

/* What a replayable capture keeps of each op: its call template, replay context, random-number state. */
typedef struct {
    PyObject *template, *context, *rng; /* NULL when not kept */
} Extras;

static int set_extras(PyObject *rec, const Extras *x) {
    return (x->template && hp_rset(rec, R_TEMPLATE, Py_NewRef(x->template)) < 0) ||
                   (x->context && hp_rset(rec, R_CONTEXT, Py_NewRef(x->context)) < 0) ||
                   (x->rng && hp_rset(rec, R_RNG, Py_NewRef(x->rng)) < 0)
               ? -1
               : 0;
}

/* One record: tensor ``t``, output ``out_index`` of op ``op_id`` (Recorder._record_one / _record_op + _finish). */
static int record_tensor(Handler *h, PyObject *func, PyObject *names, PyObject *t, PyObject *op_id, PyObject *out_index,
                         PyObject *parents, PyObject *params, PyObject *callsite, PyObject *stack, PyObject *elapsed,
                         const Extras *extras) {
    int r = -1;
    PyObject *index = PyLong_FromSsize_t(PyList_GET_SIZE(h->records));
    const HpTensorGetters *g = &h->getters;
    PyObject *size = hp_tensor_attr(g, t, T_SHAPE);
    PyObject *shape = size ? (PyTuple_Check(size) ? PyTuple_GetSlice(size, 0, PY_SSIZE_T_MAX) : PySequence_Tuple(size)) : NULL;
    PyObject *dtype = hp_tensor_attr(g, t, T_DTYPE);
    PyObject *device = hp_tensor_attr(g, t, T_DEVICE);
    PyObject *grad_fn = NULL;
    PyObject *rec = NULL, *key = NULL;
    if (!index || !shape || !dtype || !device)
        goto done;
    PyObject *argv[RECORD_ARGS] = {index, PyTuple_GET_ITEM(names, 0), PyTuple_GET_ITEM(names, 1), func, op_id, out_index,
                                   parents, stack, callsite, Py_None, params, shape, dtype, device};
    rec = hp_make(&h->maker, argv);
    if (rec == NULL)
        goto done;
    if (hp_rset(rec, R_TIME_S, Py_NewRef(elapsed)) < 0 || set_extras(rec, extras) < 0)
        goto done;
    if (PyList_GET_SIZE(parents) == 0 && hp_rset(rec, R_INTERNAL, Py_NewRef(Py_True)) < 0)
        goto done;
    /* a tensor with a grad_fn requires grad: while they do, the grad_fn is read first and requires_grad
     * only without one (a leaf, or none needed) */
    int requires_grad = -1, read_fn = h->expect_grad;
    if (read_fn && (grad_fn = grad_fn_name(g, t)) != NULL)
        requires_grad = 1;
    else if (PyErr_Occurred())
        goto done;
    if (requires_grad < 0) {
        PyObject *rg = hp_tensor_attr(g, t, T_REQUIRES_GRAD);
        if (rg == NULL)
            goto done;
        requires_grad = PyObject_IsTrue(rg);
        Py_DECREF(rg);
        if (requires_grad < 0)
            goto done;
        if (requires_grad && !read_fn && (grad_fn = grad_fn_name(g, t)) == NULL && PyErr_Occurred())
            goto done;
    }
    h->expect_grad = requires_grad;
    if (requires_grad && hp_rset(rec, R_REQUIRES_GRAD, Py_NewRef(Py_True)) < 0)
        goto done;
    if (grad_fn != NULL && hp_rset(rec, R_GRAD_FN_NAME, Py_NewRef(grad_fn)) < 0)
        goto done;
    if (hp_rset(rec, R_VERSION, hp_tensor_attr(g, t, T_VERSION)) < 0)
        goto done;
    if (hp_rset(rec, R_TENSOR_REF, PyWeakref_NewRef(t, NULL)) < 0)
        goto done;
    if (PyList_Append(h->records, rec) < 0)
        goto done;
    key = PyLong_FromVoidPtr(t);
    if (key == NULL || PyDict_SetItem(h->owner, key, rec) < 0)
        goto done;
    if (save(h, rec, t, index) < 0)
        goto done;
    if (h->sink != Py_None) {
        PyObject *s = PyObject_CallOneArg(h->sink, rec);
        if (s == NULL)
            goto done;
        Py_DECREF(s);
    }
    r = 0;
done:
    Py_XDECREF(key);
    Py_XDECREF(rec);
    Py_XDECREF(grad_fn);
    Py_XDECREF(device);
    Py_XDECREF(dtype);
    Py_XDECREF(shape);
    Py_XDECREF(size);
    Py_XDECREF(index);
    return r;
}

/* The records of one op that returned the tensors ``outs``: one call site and op number for all of
 * them; each record of a multi-output op has its own list of parents, as on the Python path. */
static int record_op(Handler *h, PyObject *func, PyObject *names, PyObject *const *outs, Py_ssize_t n,
                     PyObject *parents, PyObject *params, double seconds, const Extras *extras) {
    PyObject *callsite = hp_walk(h->stop, h->codes, h->above, PyEval_GetFrame());
    if (callsite == NULL)
        return -1;
    int r = -1;
    PyObject *op_id = hp_get_attr(h->recorder, s_op_count);
    PyObject *stack = hp_get_attr(h->tracker, s_stack);
    PyObject *elapsed = PyFloat_FromDouble(seconds);
    if (!op_id || !stack || !elapsed || hp_set_attr(h->recorder, s_op_count, PyNumber_Add(op_id, hp_one)) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *own = n == 1 ? Py_NewRef(parents) : PyList_GetSlice(parents, 0, PY_SSIZE_T_MAX);
        PyObject *out_index = own ? PyLong_FromSsize_t(i) : NULL;
        int failed = out_index == NULL ||
                     record_tensor(h, func, names, outs[i], op_id, out_index, own, params, callsite, stack, elapsed, extras) < 0;
        Py_XDECREF(out_index);
        Py_XDECREF(own);
        if (failed)
            goto done;
    }
    r = 0;
done:
    Py_XDECREF(elapsed);
    Py_XDECREF(stack);
    Py_XDECREF(op_id);
    Py_DECREF(callsite);
    return r;
}

/* Whether ``result`` is a tuple or list of tensors only (an op's several outputs, recorded here). */
static int all_tensors(Handler *h, PyObject *result) {
    if (!(PyTuple_Check(result) || PyList_Check(result)) || PySequence_Fast_GET_SIZE(result) == 0)
        return 0;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(result); i++)
        if (!PyObject_TypeCheck(PySequence_Fast_GET_ITEM(result, i), (PyTypeObject *)h->tensor_type))
            return 0;
    return 1;
}

/* The op raised: let the recorder keep the record it would have had, then raise the same exception. */
static void note_failure(Handler *h, PyObject *func, PyObject *names, PyObject *parents, PyObject *params) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *r = PyObject_CallFunctionObjArgs(h->note_failure, value ? value : Py_None, func, names, parents, params,
                                               NULL);
    if (r == NULL)
        PyErr_Clear(); /* the op's own error is the one to see */
    Py_XDECREF(r);
    PyErr_Restore(type, value, tb);
}

static PyObject *handler_call(Handler *h, PyObject *call_args, PyObject *call_kw) {
    Py_ssize_t n = PyTuple_GET_SIZE(call_args);
    if (call_kw != NULL || n < 3 || n > 4 || PyList_GET_SIZE(h->pending) > 0)
        return fallback(h, call_args, call_kw);
    PyObject *func = PyTuple_GET_ITEM(call_args, 0);
    PyObject *args = PyTuple_GET_ITEM(call_args, 2);
    PyObject *kwargs = n == 4 ? PyTuple_GET_ITEM(call_args, 3) : NULL;
    if (kwargs == Py_None || (kwargs != NULL && PyDict_CheckExact(kwargs) && PyDict_GET_SIZE(kwargs) == 0))
        kwargs = NULL;
    if (!PyTuple_CheckExact(args) || (kwargs != NULL && !PyDict_CheckExact(kwargs)))
        return fallback(h, call_args, call_kw);
    PyObject *names = PyDict_GetItemWithError(h->classified, func);
    if (names == NULL) {
        PyErr_Clear(); /* not classified yet, or unhashable: the Python path classifies it */
        return fallback(h, call_args, call_kw);
    }
    if (!PyTuple_CheckExact(names) || PyTuple_GET_SIZE(names) != 3 || !PyUnicode_Check(PyTuple_GET_ITEM(names, 0)) ||
        !PyUnicode_Check(PyTuple_GET_ITEM(names, 1)) || !PyLong_CheckExact(PyTuple_GET_ITEM(names, 2)))
        return fallback(h, call_args, call_kw);
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(names, 2));
    if (kind == KIND_METADATA)
        return PyObject_Call(func, args, kwargs);
    if (kind != KIND_OP)
        return fallback(h, call_args, call_kw);
    Py_INCREF(names); /* CLASSIFIED may drop it meanwhile */
    PyObject *result = NULL, *parents = NULL, *params = NULL, *param_ids = NULL;
    Extras extras = {NULL, NULL, NULL};
    int common = common_call(PyTuple_GET_ITEM(names, 0), PyTuple_GET_ITEM(names, 1), kwargs);
    if (common <= 0) {
        if (common == 0)
            result = fallback(h, call_args, call_kw);
        goto done;
    }
    parents = PyList_New(0);
    params = PyList_New(0);
    if (parents == NULL || params == NULL || collect_parents(h, args, kwargs, parents, params) < 0)
        goto done;
    param_ids = PyList_GET_SIZE(params) ? PyList_AsTuple(params) : PyTuple_New(0);
    if (param_ids == NULL)
        goto done;
    if (h->template_fn != Py_None) { /* after the parents: their records are what the template names */
        PyObject *kw = kwargs ? Py_NewRef(kwargs) : PyDict_New();
        extras.template = kw ? PyObject_CallFunctionObjArgs(h->template_fn, args, kw, NULL) : NULL;
        Py_XDECREF(kw);
        extras.context = extras.template ? PyObject_CallNoArgs(h->context_fn) : NULL;
        if (extras.context == NULL)
            goto done;
    }
    if (h->rng_fn != Py_None && (extras.rng = PyObject_CallNoArgs(h->rng_fn)) == NULL)
        goto done;
    double start = now();
    result = PyObject_Call(func, args, kwargs);
    double elapsed = now() - start;
    if (result == NULL) {
        note_failure(h, func, names, parents, param_ids);
        goto done;
    }
    int failed;
    if (PyObject_TypeCheck(result, (PyTypeObject *)h->tensor_type)) {
        failed = record_op(h, func, names, &result, 1, parents, param_ids, elapsed, &extras) < 0;
    } else if (all_tensors(h, result)) {
        PyObject *items = PyTuple_Check(result) ? Py_NewRef(result) : PyList_AsTuple(result); /* a sink could change a list */
        failed = items == NULL || record_op(h, func, names, PySequence_Fast_ITEMS(items), PySequence_Fast_GET_SIZE(items), parents,
                           param_ids, elapsed, &extras) < 0;
        Py_XDECREF(items);
    } else {
        PyObject *elapsed_s = PyFloat_FromDouble(elapsed);
        PyObject *r = elapsed_s ? PyObject_CallFunctionObjArgs(
                                      h->record_outputs, func, names, args, kwargs ? kwargs : Py_None, result, parents,
                                      param_ids, elapsed_s, extras.rng ? extras.rng : Py_None,
                                      extras.template ? extras.template : Py_None,
                                      extras.context ? extras.context : Py_None, NULL)
                                : NULL;
        Py_XDECREF(elapsed_s);
        failed = r == NULL;
        Py_XDECREF(r);
    }
    if (failed)
        Py_CLEAR(result);
done:
    Py_XDECREF(extras.template);
    Py_XDECREF(extras.context);
    Py_XDECREF(extras.rng);
    Py_XDECREF(param_ids);
    Py_XDECREF(params);
    Py_XDECREF(parents);
    Py_DECREF(names);
    return result;
}

#define HANDLER_FIELDS HP_FIELDS(Handler, recorder, record_init)
_Static_assert(offsetof(Handler, recorder) == sizeof(PyObject), "Handler's object fields follow the head");

HP_GC_FUNCTIONS(handler, HANDLER_FIELDS)

static PyObject *handler_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (grad_fn_names == NULL && (grad_fn_names = PyDict_New()) == NULL)
        return NULL;
    static char *kwlist[] = {"recorder", "fallback", "link", "note_failure", "record_outputs", "classified", "owner",
                             "records", "codes", "above", "stop", "tracker", "pending", "unindexed", "record_type",
                             "tensor_type", "param_type", "save_set", "postfunc", "sink", "template_fn", "context_fn",
                             "rng_fn", "record_proto", "record_init", "save_all", "detach", "save_raw", NULL};
    PyObject *o[25];
    int save_all, detach, save_raw;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOO!O!O!O!O!OOO!O!O!O!O!OOOOOOOOppp", kwlist, &o[0], &o[1], &o[2],
                                     &o[3], &o[4], &PyDict_Type, &o[5], &PyDict_Type, &o[6], &PyList_Type, &o[7],
                                     &PyDict_Type, &o[8], &PyDict_Type, &o[9], &o[10], &o[11], &PyList_Type, &o[12],
                                     &PyList_Type, &o[13], &PyType_Type, &o[14], &PyType_Type, &o[15], &PyType_Type,
                                     &o[16], &o[17], &o[18], &o[19], &o[20], &o[21], &o[22], &o[23], &o[24], &save_all,
                                     &detach, &save_raw))
        return NULL;
    _Static_assert(HANDLER_FIELDS == 25, "one parsed argument per object field, in order");
    Handler *h = (Handler *)hp_alloc(type, o, HANDLER_FIELDS);
    if (h == NULL)
        return NULL;
    hp_maker_init(&h->maker, (PyTypeObject *)h->record_type, h->record_proto, h->record_init, RECORD_ARGS);
    hp_rlayout((PyTypeObject *)h->record_type);
    hp_tensor_getters(&h->getters, (PyTypeObject *)h->tensor_type);
    h->expect_grad = 1;
    h->save_all = save_all;
    h->detach = detach;
    h->save_raw = save_raw;
    return (PyObject *)h;
}

static PyMemberDef handler_members[] = {
    {"__self__", T_OBJECT, offsetof(Handler, recorder), READONLY, "the recorder (torch checks it is the mode)"},
    {"tensor_version", T_UINT, offsetof(Handler, getters.version), READONLY,
     "torch.Tensor's version tag while its metadata getters are called directly (0: read by name)"},
    {"record_slots", T_PYSSIZET, offsetof(Handler, maker.n_slots), READONLY,
     "the slots new records get without OpRecord.__init__, or -1 (made by calling OpRecord)"},
    {NULL},
};

PyTypeObject HandlerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "lens_train.capture._hotpath.Handler",
    .tp_doc = PyDoc_STR("A recorder's __torch_function__ for the common op (see Recorder)."),
    .tp_basicsize = sizeof(Handler),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = handler_new,
    .tp_dealloc = handler_dealloc,
    .tp_traverse = handler_traverse,
    .tp_clear = handler_clear,
    .tp_call = (ternaryfunc)handler_call,
    .tp_members = handler_members,
};

