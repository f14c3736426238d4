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
    *s_instancenorm;

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

/* One record: tensor ``t``, output ``out_index`` of op ``op_id`` (Recorder._record_one / _record_op + _finish). */
static int record_tensor(Handler *h, PyObject *func, PyObject *names, PyObject *t, PyObject *op_id, PyObject *out_index,
                         PyObject *parents, PyObject *params, PyObject *callsite, PyObject *stack, PyObject *elapsed) {
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
    if (PyObject_SetAttr(rec, s_time_s, elapsed) < 0)
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
                     PyObject *parents, PyObject *params, double seconds) {
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
                     record_tensor(h, func, names, outs[i], op_id, out_index, own, params, callsite, stack, elapsed) < 0;
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
    if (!PyTuple_CheckExact(names) || PyTuple_GET_SIZE(names) != 3)
        return fallback(h, call_args, call_kw);
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(names, 2));
    if (kind == KIND_METADATA)
        return PyObject_Call(func, args, kwargs);
    if (kind != KIND_OP)
        return fallback(h, call_args, call_kw);
    Py_INCREF(names); /* CLASSIFIED may drop it meanwhile */
    PyObject *result = NULL, *parents = NULL, *params = NULL, *param_ids = NULL;
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
    double start = now();
    result = PyObject_Call(func, args, kwargs);
    double elapsed = now() - start;
    if (result == NULL) {
        note_failure(h, func, names, parents, param_ids);
        goto done;
    }
    int failed;
    if (PyObject_TypeCheck(result, (PyTypeObject *)h->tensor_type)) {
        failed = record_op(h, func, names, &result, 1, parents, param_ids, elapsed) < 0;
    } else if (all_tensors(h, result)) {
        PyObject *items = PyTuple_Check(result) ? Py_NewRef(result) : PyList_AsTuple(result); /* a sink could change a list */
        failed = items == NULL || record_op(h, func, names, PySequence_Fast_ITEMS(items), PySequence_Fast_GET_SIZE(items), parents,
                           param_ids, elapsed) < 0;
        Py_XDECREF(items);
    } else {
        PyObject *elapsed_s = PyFloat_FromDouble(elapsed);
        PyObject *r = elapsed_s ? PyObject_CallFunctionObjArgs(h->record_outputs, func, names, args,
                                                                kwargs ? kwargs : Py_None, result, parents, param_ids,
                                                                elapsed_s, NULL)
                                : NULL;
        Py_XDECREF(elapsed_s);
        failed = r == NULL;
        Py_XDECREF(r);
    }
    if (failed)
        Py_CLEAR(result);
done:
    Py_XDECREF(param_ids);
    Py_XDECREF(params);
    Py_XDECREF(parents);
    Py_DECREF(names);
    return result;
}

#define FIELDS(X)                                                                                                      \
    X(recorder) X(fallback) X(link) X(note_failure) X(record_outputs) X(classified) X(owner) X(records) X(codes)        \
        X(above) X(stop) X(tracker) X(pending) X(unindexed) X(record_type) X(tensor_type) X(param_type) X(save_set)     \
            X(postfunc) X(sink)

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
                             "tensor_type", "param_type", "save_set", "postfunc", "sink", "save_all", "detach",
                             "save_raw", NULL};
    PyObject *o[20];
    int save_all, detach, save_raw;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOO!O!O!O!O!OOO!O!OO!O!OOOppp", kwlist, &o[0], &o[1], &o[2],
                                     &o[3], &o[4], &PyDict_Type, &o[5], &PyDict_Type, &o[6], &PyList_Type, &o[7],
                                     &PyDict_Type, &o[8], &PyDict_Type, &o[9], &o[10], &o[11], &PyList_Type, &o[12],
                                     &PyList_Type, &o[13], &o[14], &PyType_Type, &o[15], &PyType_Type, &o[16], &o[17],
                                     &o[18], &o[19], &save_all, &detach, &save_raw))
        return NULL;
    Handler *h = (Handler *)type->tp_alloc(type, 0);
    if (h == NULL)
        return NULL;
    PyObject **slots[20] = {&h->recorder, &h->fallback, &h->link, &h->note_failure, &h->record_outputs,
                            &h->classified, &h->owner, &h->records, &h->codes, &h->above, &h->stop, &h->tracker,
                            &h->pending, &h->unindexed, &h->record_type, &h->tensor_type, &h->param_type,
                            &h->save_set, &h->postfunc, &h->sink};
    for (int i = 0; i < 20; i++)
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
                   {&s_instancenorm, "instancenorm"}};
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        *strings[i].slot = PyUnicode_InternFromString(strings[i].text);
        if (*strings[i].slot == NULL)
            return NULL;
    }
    one = PyLong_FromLong(1);
    if (one == NULL || PyType_Ready(&HandlerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    /* bumped with every change of Handler's arguments: a stale build is not used (recorder.py) */
    if (PyModule_AddIntConstant(m, "ABI", 2) < 0 || PyModule_AddObjectRef(m, "Handler", (PyObject *)&HandlerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
