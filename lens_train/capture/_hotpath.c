/* The recorder's common case in C: one op, one tensor output, nothing in place.
 *
 * A Handler is set as the recorder's instance ``__torch_function__`` for one capture
 * (see Recorder.__enter__). It does exactly what Recorder.__torch_function__ does for
 * metadata reads and for an op whose classification is already known, not in place,
 * whose output is one tensor; for anything else it calls that Python method
 * (``fallback``), so every rare case has one implementation, in Python.
 *
 * Needs CPython 3.11+ (PyFrame_GetLasti, PyType_GetName); the package builds it when
 * it can and runs on the Python path otherwise (lens_train/capture/recorder.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#if PY_VERSION_HEX < 0x030B0000
#error "the C hot path needs Python 3.11 or newer (the Python path runs elsewhere)"
#endif

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

/* interned attribute names */
static PyObject *s_shape, *s_dtype, *s_device, *s_requires_grad, *s_grad_fn, *s_version, *s_rec_version, *s_detach,
    *s_tensor_ref, *s_index, *s_framework, *s_stack, *s_op_count, *s_time_s, *s_is_internally_generated,
    *s_grad_fn_name, *s_activation, *s_transformed_activation, *s_inplace, *s_out, *s_setitem, *s_batchnorm,
    *s_instancenorm, *s_last_op, *s_address, *s_pass_num, *s_output_of_modules, *s_output_records, *s_self,
    *s_forward, *s_call_template, *s_replay_context, *s_rng_state;

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
    int save_all;
    int detach;              /* saved values are detached (not train mode) */
    int save_raw;
} Handler;

static PyObject *one;

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
    PyObject *ref = PyObject_GetAttr(rec, s_tensor_ref);
    PyObject *live = NULL, *framework = NULL, *version = NULL, *current = NULL, *index = NULL;
    if (ref == NULL)
        goto done;
    live = PyObject_CallNoArgs(ref);
    if (live == NULL)
        goto done;
    if (live != t) {
        *missing = 1; /* a dead tensor's id, reused */
        ok = 0;
        goto done;
    }
    framework = PyObject_GetAttr(rec, s_framework);
    if (framework == NULL)
        goto done;
    int fw = PyObject_IsTrue(framework);
    if (fw != 0) {
        ok = fw < 0 ? -1 : 0;
        goto done;
    }
    version = PyObject_GetAttr(rec, s_rec_version);
    current = version ? PyObject_GetAttr(t, s_version) : NULL;
    if (current == NULL)
        goto done;
    int same = PyObject_RichCompareBool(version, current, Py_EQ);
    if (same <= 0) {
        ok = same;
        goto done;
    }
    index = PyObject_GetAttr(rec, s_index);
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
    Py_XDECREF(ref);
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

/* The raw call site: (code id, offset) of every frame from f up to code ``stop`` (callsites.find_callsite). */
static PyObject *walk(PyObject *stop, PyObject *codes, PyObject *above, PyFrameObject *f) {
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_XINCREF(f);
    int check_above = PyDict_GET_SIZE(above) > 0;
    while (f != NULL) {
        PyObject *code = (PyObject *)PyFrame_GetCode(f);
        if (code == stop) {
            Py_DECREF(code);
            break;
        }
        PyObject *cid = PyLong_FromVoidPtr(code);
        PyObject *lasti = cid ? PyLong_FromLong(PyFrame_GetLasti(f)) : NULL;
        int bad = lasti == NULL || PyDict_SetItem(codes, cid, code) < 0 || PyList_Append(out, cid) < 0 ||
                  PyList_Append(out, lasti) < 0;
        Py_XDECREF(cid);
        Py_XDECREF(lasti);
        Py_DECREF(code);
        if (bad)
            goto fail;
        if (check_above) {
            PyObject *fid = PyLong_FromVoidPtr(f);
            if (fid == NULL)
                goto fail;
            PyObject *known = PyDict_GetItemWithError(above, fid);
            Py_DECREF(fid);
            if (known == NULL && PyErr_Occurred())
                goto fail;
            if (known != NULL && PyTuple_Check(known) && PyTuple_GET_SIZE(known) == 2 &&
                PyTuple_GET_ITEM(known, 0) == (PyObject *)f) {
                PyObject *own = PyList_AsTuple(out);
                PyObject *site = own ? PyTuple_Pack(2, own, PyTuple_GET_ITEM(known, 1)) : NULL;
                Py_XDECREF(own);
                Py_DECREF(out);
                Py_DECREF(f);
                return site;
            }
        }
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
    PyObject *site = PyList_AsTuple(out);
    Py_DECREF(out);
    return site;
fail:
    Py_XDECREF(f);
    Py_DECREF(out);
    return NULL;
}

static int set_attr(PyObject *obj, PyObject *name, PyObject *value) {
    if (value == NULL)
        return -1;
    int r = PyObject_SetAttr(obj, name, value);
    Py_DECREF(value);
    return r;
}

/* grad_fn's type name, or NULL with no error when there is none (autograd refuses some no_grad views). */
static PyObject *grad_fn_name(PyObject *t) {
    PyObject *fn = PyObject_GetAttr(t, s_grad_fn);
    if (fn == NULL) {
        if (PyErr_ExceptionMatches(PyExc_RuntimeError))
            PyErr_Clear();
        return NULL;
    }
    PyObject *name = fn == Py_None ? NULL : PyType_GetName(Py_TYPE(fn));
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
        r = set_attr(rec, s_transformed_activation, PyObject_CallOneArg(h->postfunc, value));
    if (r == 0 && h->save_raw) {
        r = PyObject_SetAttr(rec, s_activation, value);
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
    return (x->template && PyObject_SetAttr(rec, s_call_template, x->template) < 0) ||
                   (x->context && PyObject_SetAttr(rec, s_replay_context, x->context) < 0) ||
                   (x->rng && PyObject_SetAttr(rec, s_rng_state, x->rng) < 0)
               ? -1
               : 0;
}

/* One record: tensor ``t``, output ``out_index`` of op ``op_id`` (Recorder._record_one / _record_op + _finish). */
static int record_tensor(Handler *h, PyObject *func, PyObject *names, PyObject *t, PyObject *op_id, PyObject *out_index,
                         PyObject *parents, PyObject *params, PyObject *callsite, PyObject *stack, PyObject *elapsed,
                         const Extras *extras) {
    int r = -1;
    PyObject *index = PyLong_FromSsize_t(PyList_GET_SIZE(h->records));
    PyObject *size = PyObject_GetAttr(t, s_shape);
    PyObject *shape = size ? PySequence_Tuple(size) : NULL;
    PyObject *dtype = PyObject_GetAttr(t, s_dtype);
    PyObject *device = PyObject_GetAttr(t, s_device);
    PyObject *rec = NULL, *key = NULL;
    if (!index || !shape || !dtype || !device)
        goto done;
    PyObject *argv[14] = {index, PyTuple_GET_ITEM(names, 0), PyTuple_GET_ITEM(names, 1), func, op_id, out_index,
                          parents, stack, callsite, Py_None, params, shape, dtype, device};
    rec = PyObject_Vectorcall(h->record_type, argv, 14, NULL);
    if (rec == NULL)
        goto done;
    if (PyObject_SetAttr(rec, s_time_s, elapsed) < 0 || set_extras(rec, extras) < 0)
        goto done;
    if (PyList_GET_SIZE(parents) == 0 && PyObject_SetAttr(rec, s_is_internally_generated, Py_True) < 0)
        goto done;
    PyObject *rg = PyObject_GetAttr(t, s_requires_grad);
    if (rg == NULL)
        goto done;
    int requires_grad = PyObject_IsTrue(rg);
    Py_DECREF(rg);
    if (requires_grad < 0 || (requires_grad && PyObject_SetAttr(rec, s_requires_grad, Py_True) < 0))
        goto done;
    if (requires_grad) {
        PyObject *name = grad_fn_name(t);
        if (name == NULL && PyErr_Occurred())
            goto done;
        if (name != NULL && set_attr(rec, s_grad_fn_name, name) < 0)
            goto done;
    }
    if (set_attr(rec, s_rec_version, PyObject_GetAttr(t, s_version)) < 0)
        goto done;
    if (set_attr(rec, s_tensor_ref, PyWeakref_NewRef(t, NULL)) < 0)
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
    PyObject *callsite = walk(h->stop, h->codes, h->above, PyEval_GetFrame());
    if (callsite == NULL)
        return -1;
    int r = -1;
    PyObject *op_id = PyObject_GetAttr(h->recorder, s_op_count);
    PyObject *stack = PyObject_GetAttr(h->tracker, s_stack);
    PyObject *elapsed = PyFloat_FromDouble(seconds);
    if (!op_id || !stack || !elapsed || set_attr(h->recorder, s_op_count, PyNumber_Add(op_id, one)) < 0)
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

#define FIELDS(X)                                                                                                      \
    X(recorder) X(fallback) X(link) X(note_failure) X(record_outputs) X(classified) X(owner) X(records) X(codes)        \
        X(above) X(stop) X(tracker) X(pending) X(unindexed) X(record_type) X(tensor_type) X(param_type) X(save_set)     \
            X(postfunc) X(sink) X(template_fn) X(context_fn) X(rng_fn)

static int handler_traverse(Handler *h, visitproc visit, void *arg) {
#define VISIT(f) Py_VISIT(h->f);
    FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int handler_clear(Handler *h) {
#define CLEAR(f) Py_CLEAR(h->f);
    FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void handler_dealloc(Handler *h) {
    PyObject_GC_UnTrack(h);
    handler_clear(h);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyObject *handler_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"recorder", "fallback", "link", "note_failure", "record_outputs", "classified", "owner",
                             "records", "codes", "above", "stop", "tracker", "pending", "unindexed", "record_type",
                             "tensor_type", "param_type", "save_set", "postfunc", "sink", "template_fn", "context_fn",
                             "rng_fn", "save_all", "detach", "save_raw", NULL};
    PyObject *o[23];
    int save_all, detach, save_raw;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOO!O!O!O!O!OOO!O!OO!O!OOOOOOppp", kwlist, &o[0], &o[1], &o[2],
                                     &o[3], &o[4], &PyDict_Type, &o[5], &PyDict_Type, &o[6], &PyList_Type, &o[7],
                                     &PyDict_Type, &o[8], &PyDict_Type, &o[9], &o[10], &o[11], &PyList_Type, &o[12],
                                     &PyList_Type, &o[13], &o[14], &PyType_Type, &o[15], &PyType_Type, &o[16], &o[17],
                                     &o[18], &o[19], &o[20], &o[21], &o[22], &save_all, &detach, &save_raw))
        return NULL;
    Handler *h = (Handler *)type->tp_alloc(type, 0);
    if (h == NULL)
        return NULL;
    PyObject **slots[23] = {&h->recorder, &h->fallback, &h->link, &h->note_failure, &h->record_outputs,
                            &h->classified, &h->owner, &h->records, &h->codes, &h->above, &h->stop, &h->tracker,
                            &h->pending, &h->unindexed, &h->record_type, &h->tensor_type, &h->param_type,
                            &h->save_set, &h->postfunc, &h->sink, &h->template_fn, &h->context_fn, &h->rng_fn};
    for (int i = 0; i < 23; i++)
        *slots[i] = Py_NewRef(o[i]);
    h->save_all = save_all;
    h->detach = detach;
    h->save_raw = save_raw;
    return (PyObject *)h;
}

static PyMemberDef handler_members[] = {
    {"__self__", T_OBJECT, offsetof(Handler, recorder), READONLY, "the recorder (torch checks it is the mode)"},
    {NULL},
};

static PyTypeObject HandlerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "lens_train.capture._hotpath.Handler",
    .tp_doc = PyDoc_STR("A recorder's __torch_function__ for the common op (see Recorder)."),
    .tp_basicsize = sizeof(Handler),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = handler_new,
    .tp_dealloc = (destructor)handler_dealloc,
    .tp_traverse = (traverseproc)handler_traverse,
    .tp_clear = (inquiry)handler_clear,
    .tp_call = (ternaryfunc)handler_call,
    .tp_members = handler_members,
};

/* ---- module calls: ModuleCalls._opened / _closed and the forward wrapper ---- */

/* The state of one capture's module calls (module_calls.ModuleCalls): its lists and dicts, shared
 * with its Python methods (the hook path, and outputs this does not take apart). */
typedef struct {
    PyObject_HEAD
    PyObject *tracker;   /* ModuleCalls: .stack is read and set here */
    PyObject *calls;     /* list of ModuleCall */
    PyObject *open;      /* list: the open calls */
    PyObject *count;     /* address -> calls so far */
    PyObject *addresses; /* id(module) -> address */
    PyObject *types;     /* id(module) -> type name */
    PyObject *records;
    PyObject *owner;     /* id(tensor) -> OpRecord */
    PyObject *above, *codes, *stop; /* callsites.OpenCalls */
    PyObject *call_type; /* ModuleCall */
    PyObject *tensor_type;
    PyObject *py_closed; /* ModuleCalls._closed: outputs flatten does not take (dicts, dataclasses...) */
} Calls;

/* owner lookup: the record of that very tensor, or NULL (borrowed); -1 on error */
static int lookup(PyObject *owner, PyObject *t, PyObject **found) {
    *found = NULL;
    PyObject *key = PyLong_FromVoidPtr(t);
    if (key == NULL)
        return -1;
    PyObject *rec = PyDict_GetItemWithError(owner, key);
    Py_DECREF(key);
    if (rec == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *ref = PyObject_GetAttr(rec, s_tensor_ref);
    PyObject *live = ref ? PyObject_CallNoArgs(ref) : NULL;
    Py_XDECREF(ref);
    if (live == NULL)
        return -1;
    if (live == t)
        *found = rec;
    Py_DECREF(live);
    return 0;
}

/* Append the index of the record of each tensor in ``tensors`` that has one (ModuleCall's records). */
static int record_indices(Calls *c, PyObject *tensors, PyObject *out) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(tensors); i++) {
        PyObject *rec;
        if (lookup(c->owner, PyList_GET_ITEM(tensors, i), &rec) < 0)
            return -1;
        if (rec != NULL) {
            PyObject *index = PyObject_GetAttr(rec, s_index);
            int bad = index == NULL || PyList_Append(out, index) < 0;
            Py_XDECREF(index);
            if (bad)
                return -1;
        }
    }
    return 0;
}

/* calls._tensors_in(args): the tensors among the arguments and one level inside tuples and lists. */
static int tensors_in(Calls *c, PyObject *args, PyObject *out) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args); i++) {
        PyObject *a = PyTuple_GET_ITEM(args, i);
        if (PyObject_TypeCheck(a, (PyTypeObject *)c->tensor_type)) {
            if (PyList_Append(out, a) < 0)
                return -1;
        } else if (PyTuple_Check(a) || PyList_Check(a)) {
            PyObject *seq = PySequence_Fast(a, "");
            if (seq == NULL)
                return -1;
            for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(seq); j++) {
                PyObject *b = PySequence_Fast_GET_ITEM(seq, j);
                if (PyObject_TypeCheck(b, (PyTypeObject *)c->tensor_type) && PyList_Append(out, b) < 0) {
                    Py_DECREF(seq);
                    return -1;
                }
            }
            Py_DECREF(seq);
        }
    }
    return 0;
}

/* calls._flatten_output(value) where value holds only tensors, None, numbers, strings and tuples
 * or lists of them: 1; 0 when it holds anything else (dicts, dataclasses...: the Python path). */
static int flatten(Calls *c, PyObject *value, PyObject *out, int depth) {
    if (PyObject_TypeCheck(value, (PyTypeObject *)c->tensor_type))
        return PyList_Append(out, value) < 0 ? -1 : 1;
    if (depth > 8 || value == Py_None || PyLong_Check(value) || PyFloat_Check(value) || PyUnicode_Check(value))
        return 1;
    if (!(PyTuple_Check(value) || PyList_Check(value)))
        return 0;
    PyObject *seq = PySequence_Fast(value, "");
    if (seq == NULL)
        return -1;
    int r = 1;
    for (Py_ssize_t i = 0; r == 1 && i < PySequence_Fast_GET_SIZE(seq); i++)
        r = flatten(c, PySequence_Fast_GET_ITEM(seq, i), out, depth + 1);
    Py_DECREF(seq);
    return r;
}

/* ModuleCalls._opened(module, args, frame). */
static PyObject *calls_opened(Calls *c, PyObject *module, PyObject *args, PyFrameObject *frame) {
    PyObject *mid = PyLong_FromVoidPtr(module);
    if (mid == NULL)
        return NULL;
    PyObject *address = PyDict_GetItemWithError(c->addresses, mid);
    PyObject *type_name = address ? PyDict_GetItemWithError(c->types, mid) : NULL;
    Py_DECREF(mid);
    if (address == NULL || (type_name == NULL && PyErr_Occurred()))
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    Py_INCREF(address); /* held: Python code runs below */
    Py_XINCREF(type_name);
    PyObject *result = NULL, *n = NULL, *stack = NULL, *inputs = NULL, *call = NULL, *pair = NULL;
    PyObject *new_stack = NULL, *walked = NULL, *entry = NULL, *fid = NULL;
    PyObject *sofar = PyDict_GetItemWithError(c->count, address);
    if (sofar == NULL && PyErr_Occurred())
        goto done;
    n = sofar ? PyNumber_Add(sofar, one) : Py_NewRef(one);
    if (n == NULL || PyDict_SetItem(c->count, address, n) < 0)
        goto done;
    stack = PyObject_GetAttr(c->tracker, s_stack);
    if (stack == NULL || !PyTuple_Check(stack))
        goto done;
    inputs = PyList_New(0);
    PyObject *tensors = inputs ? PyList_New(0) : NULL;
    int bad = tensors == NULL || tensors_in(c, args, tensors) < 0 || record_indices(c, tensors, inputs) < 0;
    Py_XDECREF(tensors);
    if (bad)
        goto done;
    if (type_name == NULL && (type_name = PyType_GetName(Py_TYPE(module))) == NULL)
        goto done;
    Py_ssize_t depth = PyTuple_GET_SIZE(stack);
    PyObject *outputs = PyList_New(0);
    PyObject *depth_obj = PyLong_FromSsize_t(depth + 1);
    PyObject *first_op = PyLong_FromSsize_t(PyList_GET_SIZE(c->records));
    if (outputs && depth_obj && first_op) {
        PyObject *argv[8] = {address, type_name, n, depth_obj, depth ? PyTuple_GET_ITEM(stack, depth - 1) : Py_None,
                             inputs, outputs, first_op};
        call = PyObject_Vectorcall(c->call_type, argv, 8, NULL);
    }
    Py_XDECREF(outputs);
    Py_XDECREF(depth_obj);
    Py_XDECREF(first_op);
    if (call == NULL || PyList_Append(c->calls, call) < 0 || PyList_Append(c->open, call) < 0)
        goto done;
    pair = PyTuple_Pack(2, address, n);
    if (pair == NULL)
        goto done;
    new_stack = PyTuple_New(depth + 1);
    if (new_stack == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < depth; i++)
        PyTuple_SET_ITEM(new_stack, i, Py_NewRef(PyTuple_GET_ITEM(stack, i)));
    PyTuple_SET_ITEM(new_stack, depth, Py_NewRef(pair));
    if (PyObject_SetAttr(c->tracker, s_stack, new_stack) < 0)
        goto done;
    /* OpenCalls.enter(frame): the walk above this call, shared by every op inside it */
    PyFrameObject *parent = PyFrame_GetBack(frame);
    walked = parent ? walk(c->stop, c->codes, c->above, parent) : PyTuple_New(0);
    Py_XDECREF(parent);
    entry = walked ? PyTuple_Pack(2, (PyObject *)frame, walked) : NULL;
    fid = entry ? PyLong_FromVoidPtr(frame) : NULL;
    if (fid == NULL || PyDict_SetItem(c->above, fid, entry) < 0)
        goto done;
    result = Py_NewRef(call);
done:
    Py_XDECREF(fid);
    Py_XDECREF(entry);
    Py_XDECREF(walked);
    Py_XDECREF(new_stack);
    Py_XDECREF(pair);
    Py_XDECREF(call);
    Py_XDECREF(type_name);
    Py_DECREF(address);
    Py_XDECREF(inputs);
    Py_XDECREF(stack);
    Py_XDECREF(n);
    return result;
}

/* ``rec`` is an output of ``call``: note the call on the record, the record on the call. */
static int note_output(PyObject *call, PyObject *rec) {
    PyObject *address = PyObject_GetAttr(call, s_address);
    PyObject *pass = address ? PyObject_GetAttr(call, s_pass_num) : NULL;
    PyObject *key = pass ? PyTuple_Pack(2, address, pass) : NULL;
    PyObject *mods = key ? PyObject_GetAttr(rec, s_output_of_modules) : NULL;
    PyObject *index = mods ? PyObject_GetAttr(rec, s_index) : NULL;
    PyObject *outs = index ? PyObject_GetAttr(call, s_output_records) : NULL;
    int ok = outs != NULL;
    if (ok) {
        int has = PySequence_Contains(mods, key);
        if (has < 0)
            ok = 0;
        else if (!has) {
            PyObject *one_key = PyTuple_Pack(1, key);
            ok = one_key && set_attr(rec, s_output_of_modules, PySequence_Concat(mods, one_key)) == 0;
            Py_XDECREF(one_key);
        }
    }
    ok = ok && PyList_Append(outs, index) == 0;
    Py_XDECREF(outs);
    Py_XDECREF(index);
    Py_XDECREF(mods);
    Py_XDECREF(key);
    Py_XDECREF(pass);
    Py_XDECREF(address);
    return ok ? 0 : -1;
}

/* ModuleCalls._closed(call, output, frame, failed), for an output ``flatten`` takes. */
static PyObject *calls_closed(Calls *c, PyObject *call, PyObject *output, PyFrameObject *frame, int failed) {
    PyObject *tensors = NULL;
    if (!failed) { /* what the call returned, found before anything changes */
        tensors = PyList_New(0);
        int simple = tensors ? flatten(c, output, tensors, 0) : -1;
        if (simple <= 0) {
            Py_XDECREF(tensors);
            return simple < 0 ? NULL : PyObject_CallFunctionObjArgs(c->py_closed, call, output, (PyObject *)frame, NULL);
        }
    }
    PyObject *value = failed ? Py_None : output, *result = NULL;
    Py_ssize_t depth = PyList_GET_SIZE(c->open);
    if (call == Py_None || depth == 0 || PyList_GET_ITEM(c->open, depth - 1) != call) {
        Py_XDECREF(tensors);
        return Py_NewRef(value);
    }
    if (PyList_SetSlice(c->open, depth - 1, depth, NULL) < 0)
        goto done;
    PyObject *stack = PyObject_GetAttr(c->tracker, s_stack);
    if (stack == NULL)
        goto done;
    PyObject *shorter = PyTuple_Check(stack) && PyTuple_GET_SIZE(stack)
                            ? PyTuple_GetSlice(stack, 0, PyTuple_GET_SIZE(stack) - 1)
                            : Py_NewRef(stack);
    Py_DECREF(stack);
    if (set_attr(c->tracker, s_stack, shorter) < 0)
        goto done;
    /* OpenCalls.exit(frame) */
    PyObject *fid = PyLong_FromVoidPtr(frame);
    if (fid == NULL)
        goto done;
    PyObject *known = PyDict_GetItemWithError(c->above, fid);
    int bad = (known == NULL && PyErr_Occurred()) ||
              (known != NULL && PyTuple_Check(known) && PyTuple_GET_SIZE(known) == 2 &&
               PyTuple_GET_ITEM(known, 0) == (PyObject *)frame && PyDict_DelItem(c->above, fid) < 0);
    Py_DECREF(fid);
    if (bad || set_attr(call, s_last_op, PyLong_FromSsize_t(PyList_GET_SIZE(c->records) - 1)) < 0)
        goto done;
    for (Py_ssize_t i = 0; tensors != NULL && i < PyList_GET_SIZE(tensors); i++) {
        PyObject *rec;
        if (lookup(c->owner, PyList_GET_ITEM(tensors, i), &rec) < 0)
            goto done;
        if (rec != NULL) {
            Py_INCREF(rec);
            int r = note_output(call, rec);
            Py_DECREF(rec);
            if (r < 0)
                goto done;
        }
    }
    result = Py_NewRef(value);
done:
    Py_XDECREF(tensors);
    return result;
}

#define CALLS_FIELDS(X)                                                                                                \
    X(tracker) X(calls) X(open) X(count) X(addresses) X(types) X(records) X(owner) X(above) X(codes) X(stop)          \
        X(call_type) X(tensor_type) X(py_closed)

static int calls_traverse(Calls *c, visitproc visit, void *arg) {
#define VISIT(f) Py_VISIT(c->f);
    CALLS_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int calls_clear(Calls *c) {
#define CLEAR(f) Py_CLEAR(c->f);
    CALLS_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void calls_dealloc(Calls *c) {
    PyObject_GC_UnTrack(c);
    calls_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *calls_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"tracker", "calls", "open", "count", "addresses", "types", "records", "owner", "above",
                             "codes", "stop", "call_type", "tensor_type", "py_closed", NULL};
    PyObject *o[14];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!O!O!O!O!O!O!O!O!OO!O!O", kwlist, &o[0], &PyList_Type, &o[1],
                                     &PyList_Type, &o[2], &PyDict_Type, &o[3], &PyDict_Type, &o[4], &PyDict_Type,
                                     &o[5], &PyList_Type, &o[6], &PyDict_Type, &o[7], &PyDict_Type, &o[8],
                                     &PyDict_Type, &o[9], &o[10], &PyType_Type, &o[11], &PyType_Type, &o[12], &o[13]))
        return NULL;
    Calls *c = (Calls *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    PyObject **slots[14] = {&c->tracker, &c->calls, &c->open, &c->count, &c->addresses, &c->types, &c->records,
                            &c->owner, &c->above, &c->codes, &c->stop, &c->call_type, &c->tensor_type,
                            &c->py_closed};
    for (int i = 0; i < 14; i++)
        *slots[i] = Py_NewRef(o[i]);
    return (PyObject *)c;
}

static PyTypeObject CallsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "lens_train.capture._hotpath.Calls",
    .tp_doc = PyDoc_STR("One capture's module calls, opened and closed in C for the common call."),
    .tp_basicsize = sizeof(Calls),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = calls_new,
    .tp_dealloc = (destructor)calls_dealloc,
    .tp_traverse = (traverseproc)calls_traverse,
    .tp_clear = (inquiry)calls_clear,
};

/* A module's forward for the pass (ModuleCalls._wrapper's tracked_forward): a call torch makes
 * (from _call_impl) of this very module opens and closes a module call around forward. */
typedef struct {
    PyObject_HEAD
    PyObject *module;
    PyObject *forward;  /* the module's forward (also __wrapped__: inspect.signature reads it) */
    PyObject *live;     /* [Calls] while attached; emptied by detach */
    PyObject *call_impl, *with_hooks; /* the code of torch's frames that call forward */
    vectorcallfunc vectorcall;
} Wrapper;

static PyObject *wrapper_vectorcall(Wrapper *w, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    PyFrameObject *caller = PyEval_GetFrame();
    PyObject *code = caller ? (PyObject *)PyFrame_GetCode(caller) : NULL;
    int from_torch = code != NULL && (code == w->call_impl || code == w->with_hooks);
    Py_XDECREF(code);
    if (!from_torch) /* module.forward(x) called directly: no module call (as for hooks) */
        return PyObject_Vectorcall(w->forward, args, nargsf, kwnames);
    PyObject *locals = PyFrame_GetLocals(caller);
    if (locals == NULL)
        return NULL;
    PyObject *owner = PyMapping_Check(locals) ? PyObject_GetItem(locals, s_self) : NULL;
    Py_DECREF(locals);
    if (owner == NULL) {
        PyErr_Clear();
        return PyObject_Vectorcall(w->forward, args, nargsf, kwnames);
    }
    if (owner != w->module || PyList_GET_SIZE(w->live) == 0) {
        /* a copy of the module took this attribute along (or the capture is over): its own forward */
        PyObject *forward = PyObject_GetAttr((PyObject *)Py_TYPE(owner), s_forward);
        PyObject *out = NULL;
        if (forward != NULL) {
            Py_ssize_t n = PyVectorcall_NARGS(nargsf);
            Py_ssize_t total = n + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
            PyObject **full = PyMem_Malloc((total + 1) * sizeof(PyObject *));
            if (full != NULL) {
                full[0] = owner;
                for (Py_ssize_t i = 0; i < total; i++)
                    full[i + 1] = args[i];
                out = PyObject_Vectorcall(forward, full, n + 1, kwnames);
                PyMem_Free(full);
            } else
                PyErr_NoMemory();
            Py_DECREF(forward);
        }
        Py_DECREF(owner);
        return out;
    }
    Py_DECREF(owner);
    if (!Py_IS_TYPE(PyList_GET_ITEM(w->live, 0), &CallsType)) {
        PyErr_SetString(PyExc_RuntimeError, "lens_train: a capture's module-call state is not the C one");
        return NULL;
    }
    Calls *c = (Calls *)Py_NewRef(PyList_GET_ITEM(w->live, 0));
    PyObject *out = NULL;
    PyObject *positional = PyTuple_New(PyVectorcall_NARGS(nargsf));
    if (positional == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < PyVectorcall_NARGS(nargsf); i++)
        PyTuple_SET_ITEM(positional, i, Py_NewRef(args[i]));
    PyObject *call = calls_opened(c, w->module, positional, caller);
    Py_DECREF(positional);
    if (call == NULL)
        goto done;
    PyObject *output = PyObject_Vectorcall(w->forward, args, nargsf, kwnames);
    if (output == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *r = calls_closed(c, call, Py_None, caller, 1);
        if (r == NULL) /* as in Python: an error while closing replaces the forward's */
            Py_XDECREF(type), Py_XDECREF(value), Py_XDECREF(tb);
        else {
            Py_DECREF(r);
            PyErr_Restore(type, value, tb);
        }
    } else {
        out = calls_closed(c, call, output, caller, 0);
        Py_DECREF(output);
    }
    Py_DECREF(call);
done:
    Py_DECREF(c);
    return out;
}

static int wrapper_traverse(Wrapper *w, visitproc visit, void *arg) {
    Py_VISIT(w->module);
    Py_VISIT(w->forward);
    Py_VISIT(w->live);
    Py_VISIT(w->call_impl);
    Py_VISIT(w->with_hooks);
    return 0;
}

static int wrapper_clear(Wrapper *w) {
    Py_CLEAR(w->module);
    Py_CLEAR(w->forward);
    Py_CLEAR(w->live);
    Py_CLEAR(w->call_impl);
    Py_CLEAR(w->with_hooks);
    return 0;
}

static void wrapper_dealloc(Wrapper *w) {
    PyObject_GC_UnTrack(w);
    wrapper_clear(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *wrapper_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *module, *forward, *live, *call_impl, *with_hooks;
    if (!PyArg_ParseTuple(args, "OOO!OO", &module, &forward, &PyList_Type, &live, &call_impl, &with_hooks))
        return NULL;
    Wrapper *w = (Wrapper *)type->tp_alloc(type, 0);
    if (w == NULL)
        return NULL;
    w->module = Py_NewRef(module);
    w->forward = Py_NewRef(forward);
    w->live = Py_NewRef(live);
    w->call_impl = Py_NewRef(call_impl);
    w->with_hooks = Py_NewRef(with_hooks);
    w->vectorcall = (vectorcallfunc)wrapper_vectorcall;
    return (PyObject *)w;
}

/* copied as a function is, by reference: a copy of the module made during the pass runs its own forward */
static PyObject *wrapper_copy(PyObject *w, PyObject *unused) { return Py_NewRef(w); }

static PyMethodDef wrapper_methods[] = {
    {"__copy__", (PyCFunction)wrapper_copy, METH_NOARGS, NULL},
    {"__deepcopy__", (PyCFunction)wrapper_copy, METH_O, NULL},
    {NULL},
};

static PyMemberDef wrapper_members[] = {
    {"__wrapped__", T_OBJECT, offsetof(Wrapper, forward), READONLY, "the module's forward"},
    {NULL},
};

static PyTypeObject WrapperType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "lens_train.capture._hotpath.Wrapper",
    .tp_doc = PyDoc_STR("A module's forward during a capture: opens and closes its module calls."),
    .tp_basicsize = sizeof(Wrapper),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = wrapper_new,
    .tp_dealloc = (destructor)wrapper_dealloc,
    .tp_traverse = (traverseproc)wrapper_traverse,
    .tp_clear = (inquiry)wrapper_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Wrapper, vectorcall),
    .tp_members = wrapper_members,
    .tp_methods = wrapper_methods,
};

/* walk(stop, codes, above, frame): callsites.find_callsite(stop, codes, above, frame)[0], in C */
static PyObject *py_walk(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyDict_Check(args[1]) || !PyDict_Check(args[2]) || !PyFrame_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "walk(stop, codes: dict, above: dict, frame)");
        return NULL;
    }
    return walk(args[0], args[1], args[2], (PyFrameObject *)args[3]);
}

static PyMethodDef functions[] = {
    {"walk", (PyCFunction)(void (*)(void))py_walk, METH_FASTCALL, "The raw call site from frame up to code stop."},
    {NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hotpath", "The recorder's common case in C.", -1,
                                    functions};

PyMODINIT_FUNC PyInit__hotpath(void) {
    struct {
        PyObject **slot;
        const char *text;
    } strings[] = {{&s_shape, "shape"},
                   {&s_dtype, "dtype"},
                   {&s_device, "device"},
                   {&s_requires_grad, "requires_grad"},
                   {&s_grad_fn, "grad_fn"},
                   {&s_version, "_version"},
                   {&s_rec_version, "version"},
                   {&s_detach, "detach"},
                   {&s_tensor_ref, "tensor_ref"},
                   {&s_index, "index"},
                   {&s_framework, "framework"},
                   {&s_stack, "stack"},
                   {&s_op_count, "_op_count"},
                   {&s_time_s, "time_s"},
                   {&s_is_internally_generated, "is_internally_generated"},
                   {&s_grad_fn_name, "grad_fn_name"},
                   {&s_activation, "activation"},
                   {&s_transformed_activation, "transformed_activation"},
                   {&s_inplace, "inplace"},
                   {&s_out, "out"},
                   {&s_setitem, "__setitem__"},
                   {&s_batchnorm, "batchnorm"},
                   {&s_instancenorm, "instancenorm"},
                   {&s_last_op, "last_op"},
                   {&s_address, "address"},
                   {&s_pass_num, "pass_num"},
                   {&s_output_of_modules, "output_of_modules"},
                   {&s_output_records, "output_records"},
                   {&s_self, "self"},
                   {&s_forward, "forward"},
                   {&s_call_template, "call_template"},
                   {&s_replay_context, "replay_context"},
                   {&s_rng_state, "rng_state"}};
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        *strings[i].slot = PyUnicode_InternFromString(strings[i].text);
        if (*strings[i].slot == NULL)
            return NULL;
    }
    one = PyLong_FromLong(1);
    if (one == NULL || PyType_Ready(&HandlerType) < 0 || PyType_Ready(&CallsType) < 0 || PyType_Ready(&WrapperType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    /* bumped with every change of Handler's arguments: a stale build is not used (recorder.py) */
    if (PyModule_AddIntConstant(m, "ABI", 5) < 0 || PyModule_AddObjectRef(m, "Handler", (PyObject *)&HandlerType) < 0 ||
        PyModule_AddObjectRef(m, "Calls", (PyObject *)&CallsType) < 0 ||
        PyModule_AddObjectRef(m, "Wrapper", (PyObject *)&WrapperType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
