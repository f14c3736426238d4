/* What a capture reads of the model before its pass, in C: the module walk (model_index.walk_modules), what
 * the capture keeps of the walked modules (model_index.module_facts) and their parameters and buffers
 * (model_index.index_model). model_index.py stays the one
 * description of both: these give the same tuples, or None where a module is not laid out as they expect
 * (its own named_modules, a property over _modules, a name that is not a str...), and the Python runs. */
#include "_hotpath.h"

static PyObject *s_named_modules, *s_modules, *s_parameters, *s_buffers, *s_getattribute;
static PyObject *object_getattribute; /* object.__getattribute__ */

/* The address of ``name`` under ``prefix`` (f"{prefix}.{name}", or name under the root's ""), made once per
 * pair and kept in memo (prefix -> {name: address}); borrowed from memo, NULL on error. */
static PyObject *joined(PyObject *memo, PyObject *prefix, PyObject *name) {
    PyObject *inner = PyDict_GetItemWithError(memo, prefix);
    if (inner == NULL) {
        if (PyErr_Occurred())
            return NULL;
        if (PyDict_GET_SIZE(memo) >= 65536) /* models made and dropped at run time: start over */
            PyDict_Clear(memo);
        if ((inner = PyDict_New()) == NULL)
            return NULL;
        int r = PyDict_SetItem(memo, prefix, inner);
        Py_DECREF(inner); /* (memo holds it) */
        if (r < 0)
            return NULL;
    }
    PyObject *full = PyDict_GetItemWithError(inner, name);
    if (full != NULL || PyErr_Occurred())
        return full;
    full = PyUnicode_GET_LENGTH(prefix) == 0 ? Py_NewRef(name) : PyUnicode_FromFormat("%U.%U", prefix, name);
    if (full == NULL)
        return NULL;
    int r = PyDict_SetItem(inner, name, full);
    Py_DECREF(full);
    return r < 0 ? NULL : full;
}

/* modules[i], an (address, module) pair of a module walk (borrowed; NULL with TypeError set: not one) */
static PyObject *walk_pair(PyObject *modules, Py_ssize_t i) {
    PyObject *pair = PyTuple_GET_ITEM(modules, i);
    if (PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2)
        return pair;
    PyErr_SetString(PyExc_TypeError, "modules holds (address, module) pairs");
    return NULL;
}

/* What ``module.<attr>`` names when it is a plain instance attribute (borrowed); NULL with no error set
 * when it is not. */
PyObject *hp_own_attr(PyObject *module, PyObject *attr) {
    PyObject **dictptr = _PyObject_GetDictPtr(module);
    /* attribute access looks in the instance dict when the type has no attribute of that name and keeps
     * object.__getattribute__ (nn.Module's __getattr__ only runs for names found nowhere) */
    if (dictptr == NULL || *dictptr == NULL || _PyType_Lookup(Py_TYPE(module), attr) != NULL ||
        _PyType_Lookup(Py_TYPE(module), s_getattribute) != object_getattribute)
        return NULL;
    return PyDict_GetItemWithError(*dictptr, attr);
}

/* The dict ``module.<attr>`` names when it is a plain instance attribute holding a dict (borrowed);
 * NULL with no error set when it is not. */
static PyObject *own_dict(PyObject *module, PyObject *attr) {
    PyObject *d = hp_own_attr(module, attr);
    return d != NULL && PyDict_CheckExact(d) ? d : NULL;
}

/* walk_modules(model, named_modules, memo) -> ((address, module), ...) as model_index.walk_modules, or None.
 * named_modules: nn.Module.named_modules (a module whose type has another one takes the Python path). */
static PyObject *py_walk_modules(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyDict_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "walk_modules(model, named_modules, memo: dict)");
        return NULL;
    }
    PyObject *named_modules = args[1], *memo = args[2];
    PyObject *out = PyList_New(0), *stack = PyList_New(0), *result = NULL;
    PyObject *root = out && stack ? PyTuple_Pack(2, s_empty, args[0]) : NULL;
    if (root == NULL || PyList_Append(stack, root) < 0)
        goto done;
    while (PyList_GET_SIZE(stack) > 0) {
        Py_ssize_t top = PyList_GET_SIZE(stack) - 1;
        PyObject *pair = Py_NewRef(PyList_GET_ITEM(stack, top));
        if (PyList_SetSlice(stack, top, top + 1, NULL) < 0 || PyList_Append(out, pair) < 0) {
            Py_DECREF(pair);
            goto done;
        }
        PyObject *prefix = PyTuple_GET_ITEM(pair, 0), *module = PyTuple_GET_ITEM(pair, 1);
        Py_DECREF(pair); /* (out holds it) */
        PyObject *walker = _PyType_Lookup(Py_TYPE(module), s_named_modules);
        PyObject *children = walker == named_modules ? own_dict(module, s_modules) : NULL;
        if (children == NULL) {
            if (!PyErr_Occurred())
                result = Py_NewRef(Py_None);
            goto done;
        }
        Py_ssize_t at = PyList_GET_SIZE(stack), it = 0;
        PyObject *name, *child;
        while (PyDict_Next(children, &it, &name, &child)) { /* pushed in reverse: the first child is walked next */
            if (child == Py_None)
                continue;
            if (!PyUnicode_CheckExact(name)) {
                result = Py_NewRef(Py_None);
                goto done;
            }
            PyObject *address = joined(memo, prefix, name);
            PyObject *item = address ? PyTuple_Pack(2, address, child) : NULL;
            if (item == NULL || PyList_Insert(stack, at, item) < 0) {
                Py_XDECREF(item);
                goto done;
            }
            Py_DECREF(item);
        }
    }
    result = PyList_AsTuple(out);
done:
    Py_XDECREF(root);
    Py_XDECREF(stack);
    Py_XDECREF(out);
    return result;
}

/* the (address, tensor) pairs of every module's ``attr`` dict, None entries left out; NULL with no error:
 * a module not laid out for it */
static PyObject *named_tensors(PyObject *modules, PyObject *attr, PyObject *memo) {
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out != NULL && i < PyTuple_GET_SIZE(modules); i++) {
        PyObject *pair = walk_pair(modules, i);
        /* (an address that is no str, from a module's own named_modules: the Python path) */
        PyObject *d = pair && PyUnicode_CheckExact(PyTuple_GET_ITEM(pair, 0)) ? own_dict(PyTuple_GET_ITEM(pair, 1), attr) : NULL;
        if (d == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyObject *name, *t;
        Py_ssize_t it = 0;
        while (out != NULL && PyDict_Next(d, &it, &name, &t)) {
            if (t == Py_None)
                continue;
            PyObject *address = PyUnicode_CheckExact(name) ? joined(memo, PyTuple_GET_ITEM(pair, 0), name) : NULL;
            PyObject *item = address ? PyTuple_Pack(2, address, t) : NULL;
            if (item == NULL || PyList_Append(out, item) < 0)
                Py_CLEAR(out);
            Py_XDECREF(item);
        }
    }
    PyObject *tuple = out ? PyList_AsTuple(out) : NULL;
    Py_XDECREF(out);
    return tuple;
}

/* index_tensors(modules, memo) -> (params, buffers) as model_index.index_model reads them, or None */
static PyObject *py_index_tensors(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "index_tensors(modules: tuple, memo: dict)");
        return NULL;
    }
    PyObject *params = named_tensors(args[0], s_parameters, args[1]);
    PyObject *buffers = params ? named_tensors(args[0], s_buffers, args[1]) : NULL;
    PyObject *out = buffers ? PyTuple_Pack(2, params, buffers) : PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    Py_XDECREF(params);
    Py_XDECREF(buffers);
    return out;
}

/* module_facts(modules, prefix) -> (unique, names, types, with_buffers, bare, prefixed) as
 * model_index.module_facts, or None for a module not laid out for it */
static PyObject *py_module_facts(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "module_facts(modules: tuple, prefix: str)");
        return NULL;
    }
    PyObject *modules = args[0], *prefix = args[1], *out = NULL;
    PyObject *unique = PyList_New(0), *names = PyDict_New(), *types = PyDict_New(), *with_buffers = PyList_New(0),
             *bare = PyList_New(0);
    int prefixed = 0;
    if (!unique || !names || !types || !with_buffers || !bare)
        goto done;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(modules); i++) {
        PyObject *pair = walk_pair(modules, i);
        if (pair == NULL)
            goto done;
        PyObject *module = PyTuple_GET_ITEM(pair, 1), *key = PyLong_FromVoidPtr(module);
        if (key == NULL)
            goto done;
        int seen = PyDict_Contains(names, key);
        PyObject *type_name = seen == 0 ? PyType_GetName(Py_TYPE(module)) : NULL;
        PyObject *buffers = type_name ? own_dict(module, s_buffers) : NULL;
        int failed = seen < 0 || (seen == 0 && (type_name == NULL || (buffers == NULL && !PyErr_Occurred())));
        if (!failed && seen == 0) {
            Py_ssize_t match = PyUnicode_Tailmatch(type_name, prefix, 0, PY_SSIZE_T_MAX, -1);
            prefixed = prefixed || match > 0;
            failed = match < 0 || PyDict_SetItem(names, key, PyTuple_GET_ITEM(pair, 0)) < 0 ||
                     PyDict_SetItem(types, key, type_name) < 0 || PyList_Append(unique, module) < 0 ||
                     PyList_Append(PyDict_GET_SIZE(buffers) ? with_buffers : bare, module) < 0;
        }
        Py_XDECREF(type_name);
        Py_DECREF(key);
        if (failed) {
            if (!PyErr_Occurred())
                out = Py_NewRef(Py_None);
            goto done;
        }
    }
    out = PyTuple_Pack(6, unique, names, types, with_buffers, bare, prefixed ? Py_True : Py_False);
done:
    Py_XDECREF(unique);
    Py_XDECREF(names);
    Py_XDECREF(types);
    Py_XDECREF(with_buffers);
    Py_XDECREF(bare);
    return out;
}

/* any_of(modules, cls, type_name) -> whether a module is an instance of cls or of a type of that name
 * (api.check_supported then runs its own loop, for its error) */
static PyObject *py_any_of(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyTuple_Check(args[0]) || !PyUnicode_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "any_of(modules: tuple, cls, type_name: str)");
        return NULL;
    }
    PyObject *modules = args[0];
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(modules); i++) {
        PyObject *pair = walk_pair(modules, i);
        if (pair == NULL)
            return NULL;
        PyObject *module = PyTuple_GET_ITEM(pair, 1);
        int found = PyObject_IsInstance(module, args[1]);
        if (found == 0) {
            PyObject *name = PyType_GetName(Py_TYPE(module));
            found = name ? PyUnicode_Compare(name, args[2]) == 0 : -1;
            if (found == 0 && PyErr_Occurred())
                found = -1;
            Py_XDECREF(name);
        }
        if (found != 0)
            return found < 0 ? NULL : Py_NewRef(Py_True);
    }
    Py_RETURN_FALSE;
}

PyMethodDef hp_model_functions[] = {
    {"walk_modules", (PyCFunction)(void (*)(void))py_walk_modules, METH_FASTCALL,
     "model_index.walk_modules, or None for a model not laid out for it."},
    {"index_tensors", (PyCFunction)(void (*)(void))py_index_tensors, METH_FASTCALL,
     "The parameters and buffers of model_index.index_model, or None."},
    {"module_facts", (PyCFunction)(void (*)(void))py_module_facts, METH_FASTCALL,
     "model_index.module_facts, or None."},
    {"any_of", (PyCFunction)(void (*)(void))py_any_of, METH_FASTCALL,
     "Whether a module is an instance of a class or of a type of that name."},
    {NULL},
};

int hp_model_init(void) {
    s_named_modules = PyUnicode_InternFromString("named_modules");
    s_modules = PyUnicode_InternFromString("_modules");
    s_parameters = PyUnicode_InternFromString("_parameters");
    s_buffers = PyUnicode_InternFromString("_buffers");
    s_getattribute = PyUnicode_InternFromString("__getattribute__");
    if (!s_named_modules || !s_modules || !s_parameters || !s_buffers || !s_getattribute)
        return -1;
    object_getattribute = _PyType_Lookup(&PyBaseObject_Type, s_getattribute); /* (a static type keeps it) */
    return object_getattribute != NULL ? 0 : -1;
}
