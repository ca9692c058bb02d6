// plugins: a host that does not link Python loads two plugins with dlopen
// (RTLD_LOCAL: neither sees the other's symbols). Each includes pyscheduler and
// creates its own PyManager; both must end up on the same interpreter.
#include <dlfcn.h>

#include <iostream>
#include <string>

using IdentityFn = int (*)(char*, int);

static std::string identity_from(const char* path) {
    void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) throw std::runtime_error(std::string("dlopen failed: ") + dlerror());
    auto fn = reinterpret_cast<IdentityFn>(dlsym(lib, "plugin_identity"));
    if (fn == nullptr) throw std::runtime_error(std::string("dlsym failed: ") + dlerror());
    char buf[256];
    fn(buf, sizeof buf);
    return buf;  // the plugins stay loaded: Python code of theirs may still run at exit
}

int main() {
    const std::string a = identity_from(PLUGIN_A);
    const std::string b = identity_from(PLUGIN_B);
    std::cout << a << "\n" << b << "\n";
    const std::string ida = a.substr(a.find(" sees ") + 6);
    const std::string idb = b.substr(b.find(" sees ") + 6);
    if (ida != idb) {
        std::cout << "DIFFERENT interpreters: plugin-safety is broken\n";
        return 1;
    }
    std::cout << "one interpreter shared by both plugins (id(sys)/interpreter id " << ida << ")\n";
    return 0;
}
