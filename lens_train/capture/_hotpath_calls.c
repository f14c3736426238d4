/* Calls, Wrapper: module calls opened and closed in C (module_calls.ModuleCalls). */
#include "_hotpath.h"

#if PY_VERSION_HEX < 0x030C0000
/* Python 3.11 has no public call that reads one local of a frame without making its whole locals dict
 * (PyFrame_GetLocals: most of a module call's cost here); its frame layout is read instead. */
#define Py_BUILD_CORE 1
#include <internal/pycore_code.h>  /* CO_FAST_CELL, CO_FAST_FREE */
#include <internal/pycore_frame.h> /* struct _frame, _PyInterpreterFrame */
#undef Py_BUILD_CORE

/* The value of local ``name`` (an argument, or a cell or free variable holding it) of frame f, as
 * f.f_locals[name] gives it (new reference), or NULL with no error where it has none. */
static PyObject *frame_local(PyFrameObject *f, PyObject *name) {
    _PyInterpreterFrame *frame = ((struct _frame *)f)->f_frame;
    PyCodeObject *code = frame->f_code;
    PyObject *names = code->co_localsplusnames;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        PyObject *here = PyTuple_GET_ITEM(names, i);
        if (here != name && (!PyUnicode_Check(here) || PyUnicode_Compare(here, name) != 0))
            continue;
        PyObject *value = frame->localsplus[i];
        unsigned char kind = (unsigned char)PyBytes_AS_STRING(code->co_localspluskinds)[i];
        if (value != NULL && (kind & (CO_FAST_CELL | CO_FAST_FREE)) && PyCell_Check(value))
            value = PyCell_GET(value);
        return Py_XNewRef(value);
    }
    return NULL;
}
#else
static PyObject *frame_local(PyFrameObject *f, PyObject *name) {
    PyObject *value = PyFrame_GetVar(f, name);
    if (value == NULL)
        PyErr_Clear();
    return value;
}
#endif

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
    PyObject *call_proto, *call_init; /* ModuleCall's prototype (or None) and its CALL_ARGS argument names */
    HpMaker maker;       /* makes ModuleCalls */
} Calls;

enum { CALL_ARGS = 8 };

/* Append the index of the record of each tensor in ``tensors`` that has one (ModuleCall's records). */
static int record_indices(Calls *c, PyObject *tensors, PyObject *out) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(tensors); i++) {
        PyObject *rec;
        if (hp_lookup(c->owner, PyList_GET_ITEM(tensors, i), &rec) < 0)
            return -1;
        if (rec != NULL) {
            PyObject *index = hp_rget(rec, R_INDEX);
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
    n = sofar ? PyNumber_Add(sofar, hp_one) : Py_NewRef(hp_one);
    if (n == NULL || PyDict_SetItem(c->count, address, n) < 0)
        goto done;
    stack = hp_get_attr(c->tracker, s_stack);
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
        PyObject *argv[CALL_ARGS] = {address, type_name, n, depth_obj,
                                     depth ? PyTuple_GET_ITEM(stack, depth - 1) : Py_None, inputs, outputs, first_op};
        call = hp_make(&c->maker, argv);
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
    if (hp_set_attr(c->tracker, s_stack, Py_NewRef(new_stack)) < 0)
        goto done;
    /* OpenCalls.enter(frame): the walk above this call, shared by every op inside it */
    PyCodeObject *frame_code = PyFrame_GetCode(frame);
    hp_note_call_code((PyObject *)frame_code);
    Py_DECREF(frame_code);
    PyFrameObject *parent = PyFrame_GetBack(frame);
    walked = parent ? hp_walk(c->stop, c->codes, c->above, parent) : PyTuple_New(0);
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
    PyObject *mods = key ? hp_rget(rec, R_OUTPUT_OF_MODULES) : NULL;
    PyObject *index = mods ? hp_rget(rec, R_INDEX) : NULL;
    PyObject *outs = index ? PyObject_GetAttr(call, s_output_records) : NULL;
    int ok = outs != NULL;
    if (ok) {
        int has = PySequence_Contains(mods, key);
        if (has < 0)
            ok = 0;
        else if (!has) {
            PyObject *one_key = PyTuple_Pack(1, key);
            ok = one_key && hp_rset(rec, R_OUTPUT_OF_MODULES, PySequence_Concat(mods, one_key)) == 0;
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
    PyObject *stack = hp_get_attr(c->tracker, s_stack);
    if (stack == NULL)
        goto done;
    PyObject *shorter = PyTuple_Check(stack) && PyTuple_GET_SIZE(stack)
                            ? PyTuple_GetSlice(stack, 0, PyTuple_GET_SIZE(stack) - 1)
                            : Py_NewRef(stack);
    Py_DECREF(stack);
    if (hp_set_attr(c->tracker, s_stack, shorter) < 0)
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
    if (bad || hp_set_attr(call, s_last_op, PyLong_FromSsize_t(PyList_GET_SIZE(c->records) - 1)) < 0)
        goto done;
    for (Py_ssize_t i = 0; tensors != NULL && i < PyList_GET_SIZE(tensors); i++) {
        PyObject *rec;
        if (hp_lookup(c->owner, PyList_GET_ITEM(tensors, i), &rec) < 0)
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

#define CALLS_FIELDS HP_FIELDS(Calls, tracker, call_init)
_Static_assert(offsetof(Calls, tracker) == sizeof(PyObject), "Calls' object fields follow the head");

HP_GC_FUNCTIONS(calls, CALLS_FIELDS)

static PyObject *calls_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"tracker", "calls", "open", "count", "addresses", "types", "records", "owner", "above",
                             "codes", "stop", "call_type", "tensor_type", "py_closed", "call_proto", "call_init", NULL};
    PyObject *o[16];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!O!O!O!O!O!O!O!O!OO!O!OOO", kwlist, &o[0], &PyList_Type, &o[1],
                                     &PyList_Type, &o[2], &PyDict_Type, &o[3], &PyDict_Type, &o[4], &PyDict_Type,
                                     &o[5], &PyList_Type, &o[6], &PyDict_Type, &o[7], &PyDict_Type, &o[8],
                                     &PyDict_Type, &o[9], &o[10], &PyType_Type, &o[11], &PyType_Type, &o[12], &o[13],
                                     &o[14], &o[15]))
        return NULL;
    _Static_assert(CALLS_FIELDS == 16, "one parsed argument per object field, in order");
    Calls *c = (Calls *)hp_alloc(type, o, CALLS_FIELDS);
    if (c != NULL)
        hp_maker_init(&c->maker, (PyTypeObject *)c->call_type, c->call_proto, c->call_init, CALL_ARGS);
    return (PyObject *)c;
}

static PyMemberDef calls_members[] = {
    {"call_slots", T_PYSSIZET, offsetof(Calls, maker.n_slots), READONLY,
     "the slots new ModuleCalls get without ModuleCall.__init__, or -1 (made by calling ModuleCall)"},
    {NULL},
};

PyTypeObject CallsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "lens_train.capture._hotpath.Calls",
    .tp_doc = PyDoc_STR("One capture's module calls, opened and closed in C for the common call."),
    .tp_basicsize = sizeof(Calls),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = calls_new,
    .tp_dealloc = calls_dealloc,
    .tp_traverse = calls_traverse,
    .tp_clear = calls_clear,
    .tp_members = calls_members,
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
    PyObject *owner = frame_local(caller, s_self);
    if (owner == NULL)
        return PyObject_Vectorcall(w->forward, args, nargsf, kwnames);
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

#define WRAPPER_FIELDS HP_FIELDS(Wrapper, module, with_hooks)
_Static_assert(offsetof(Wrapper, module) == sizeof(PyObject), "Wrapper's object fields follow the head");

HP_GC_FUNCTIONS(wrapper, WRAPPER_FIELDS)

static PyObject *wrapper_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *o[5]; /* module, forward, live, call_impl, with_hooks */
    if (!PyArg_ParseTuple(args, "OOO!OO", &o[0], &o[1], &PyList_Type, &o[2], &o[3], &o[4]))
        return NULL;
    _Static_assert(WRAPPER_FIELDS == 5, "one parsed argument per object field, in order");
    Wrapper *w = (Wrapper *)hp_alloc(type, o, WRAPPER_FIELDS);
    if (w != NULL)
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

PyTypeObject WrapperType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "lens_train.capture._hotpath.Wrapper",
    .tp_doc = PyDoc_STR("A module's forward during a capture: opens and closes its module calls."),
    .tp_basicsize = sizeof(Wrapper),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = wrapper_new,
    .tp_dealloc = wrapper_dealloc,
    .tp_traverse = wrapper_traverse,
    .tp_clear = wrapper_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Wrapper, vectorcall),
    .tp_members = wrapper_members,
    .tp_methods = wrapper_methods,
};

static PyObject *s_hook_dicts[4]; /* the four hook dicts a module without hooks has empty */

/* Whether module has no hooks of its own: 1, 0, or -1 when its hook dicts are not plain instance
 * attributes holding a dict or OrderedDict (an error set or not) */
static int without_hooks(PyObject *module) {
    for (int i = 0; i < 4; i++) {
        PyObject *d = hp_own_attr(module, s_hook_dicts[i]);
        if (d == NULL || !(PyDict_CheckExact(d) || PyODict_CheckExact(d)))
            return -1;
        if (PyDict_GET_SIZE(d) > 0)
            return 0;
    }
    return 1;
}

/* attach(modules, root, live, call_impl, with_hooks, wrapped, absent) -> the modules left to ModuleCalls.attach's
 * loop: its wrapping of each module without hooks of its own (wrapped gets (module, previous forward or absent,
 * wrapper) before the wrapper is installed, so a detach also undoes a half-finished attach) */
static PyObject *py_attach(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyList_Check(args[0]) || !PyList_Check(args[2]) || !PyList_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "attach(modules: list, root, live: list, call_impl, with_hooks, wrapped: list, absent)");
        return NULL;
    }
    PyObject *modules = args[0], *root = args[1], *wrapped = args[5], *absent = args[6];
    PyObject *rest = PyList_New(0);
    for (Py_ssize_t i = 0; rest != NULL && i < PyList_GET_SIZE(modules); i++) {
        PyObject *module = PyList_GET_ITEM(modules, i);
        if (module == root)
            continue;
        int plain = without_hooks(module);
        PyObject **dictptr = plain > 0 ? _PyObject_GetDictPtr(module) : NULL;
        if (plain < 0 && PyErr_Occurred()) {
            Py_CLEAR(rest);
            break;
        }
        if (dictptr == NULL || *dictptr == NULL) {
            if (PyList_Append(rest, module) < 0)
                Py_CLEAR(rest);
            continue;
        }
        PyObject *state = *dictptr;
        PyObject *forward = PyObject_GetAttr(module, s_forward), *wrapper = NULL, *entry = NULL;
        PyObject *fields[5] = {module, forward, args[2], args[3], args[4]};
        if (forward != NULL && (wrapper = hp_alloc(&WrapperType, fields, WRAPPER_FIELDS)) != NULL)
            ((Wrapper *)wrapper)->vectorcall = (vectorcallfunc)wrapper_vectorcall;
        PyObject *previous = wrapper ? PyDict_GetItemWithError(state, s_forward) : NULL;
        if (wrapper != NULL && (previous != NULL || !PyErr_Occurred()))
            entry = PyTuple_Pack(3, module, previous ? previous : absent, wrapper);
        if (entry == NULL || PyList_Append(wrapped, entry) < 0 || PyDict_SetItem(state, s_forward, wrapper) < 0)
            Py_CLEAR(rest);
        Py_XDECREF(entry);
        Py_XDECREF(wrapper);
        Py_XDECREF(forward);
    }
    return rest;
}

/* detach(wrapped, absent): ModuleCalls.detach's removal of the wrappers (a forward the model set
 * meanwhile is its own); wrapped is emptied */
static PyObject *py_detach(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "detach(wrapped: list, absent)");
        return NULL;
    }
    PyObject *wrapped = args[0], *absent = args[1];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(wrapped); i++) {
        PyObject *entry = PyList_GET_ITEM(wrapped, i);
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3) {
            PyErr_SetString(PyExc_TypeError, "wrapped holds (module, previous forward, wrapper) entries");
            return NULL;
        }
        PyObject **dictptr = _PyObject_GetDictPtr(PyTuple_GET_ITEM(entry, 0));
        PyObject *state = dictptr ? *dictptr : NULL;
        PyObject *now = state ? PyDict_GetItemWithError(state, s_forward) : NULL;
        if (now == NULL || now != PyTuple_GET_ITEM(entry, 2)) {
            if (PyErr_Occurred())
                return NULL;
            continue;
        }
        PyObject *previous = PyTuple_GET_ITEM(entry, 1);
        if ((previous == absent ? PyDict_DelItem(state, s_forward) : PyDict_SetItem(state, s_forward, previous)) < 0)
            return NULL;
    }
    if (PyList_SetSlice(wrapped, 0, PyList_GET_SIZE(wrapped), NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyMethodDef hp_calls_functions[] = {
    {"attach", (PyCFunction)(void (*)(void))py_attach, METH_FASTCALL,
     "ModuleCalls.attach's wrapping of the modules without hooks: the modules left to it."},
    {"detach", (PyCFunction)(void (*)(void))py_detach, METH_FASTCALL, "ModuleCalls.detach's removal of the wrappers."},
    {NULL},
};

int hp_calls_init(void) {
    const char *names[4] = {"_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks"};
    for (int i = 0; i < 4; i++)
        if ((s_hook_dicts[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return -1;
    return 0;
}


