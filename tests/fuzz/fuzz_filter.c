/* libFuzzer target for the filter language (lua/stdlib/lupe/filter.lua), run in an
 * embedded LuaJIT exactly as sessions run it. The input is a filter expression. Each run
 * calls filter.compile(input); compile must either return a filter or nil and a message
 * "filter:COL: ...": raising is a bug (it would kill the script that passed user text).
 * A compiled filter's match() is then called on a synthetic entry with user and kernel
 * frames and must return a boolean without raising, and pids() nil or a list of numbers.
 * libFuzzer sees no coverage in Lua code, so a line hook feeds it: each (previous line,
 * line) pair bumps a counter in the __libfuzzer_extra_counters section, with the JIT off
 * (compiled traces call no hooks). LUPE_STDLIB (set at build time) points at lua/stdlib.
 * Seeds: tests/fixtures/fuzz/filter/. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;

__attribute__((section("__libfuzzer_extra_counters"), used))
static uint8_t lua_edges[1 << 16];
static uintptr_t prev_line;

static void line_hook(lua_State *Ls, lua_Debug *ar)
{
	uintptr_t cur;

	if (!lua_getinfo(Ls, "S", ar))
		return;
	/* The source string of a chunk is interned: its address names the file. */
	cur = (uintptr_t)ar->source * 2654435761u + (uintptr_t)ar->currentline;
	lua_edges[(cur ^ (prev_line >> 1)) & (sizeof(lua_edges) - 1)]++;
	prev_line = cur;
}

/* The driver, in Lua: the checks are easier to state there, and any raise reaches C. */
static const char driver[] =
	"require('jit').off()\n"
	"local entry = { pid = 4242, comm = 'nginx: worker', exe = '/usr/sbin/nginx',\n"
	"  cgroup = 'system.slice/nginx.service', frames = {\n"
	"    { name = 'malloc', module = 'libc.so.6', kind = 'native' },\n"
	"    { name = 'do_syscall_64', module = '[kernel]', kind = 'kernel' },\n"
	"    { module = 'nginx', kind = 'unknown' } } }\n"
	"return function(src)\n"
	"  local f, msg = require('lupe.filter').compile(src)\n"
	"  if not f then\n"
	"    assert(type(msg) == 'string' and msg:match('^filter:%d+: '), 'bad message')\n"
	"    return\n"
	"  end\n"
	"  assert(type(f.match(entry)) == 'boolean', 'match is not a boolean')\n"
	"  assert(type(f.match({ pid = 1, comm = '' })) == 'boolean', 'no frames')\n"
	"  local pids = f.pids()\n"
	"  if pids ~= nil then\n"
	"    for _, p in ipairs(pids) do assert(type(p) == 'number', 'pid') end\n"
	"  end\n"
	"end\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	L = luaL_newstate();
	if (!L)
		abort();
	luaL_openlibs(L);
	lua_getglobal(L, "package");
	lua_pushstring(L, LUPE_STDLIB "/?.lua;" LUPE_STDLIB "/?/init.lua");
	lua_setfield(L, -2, "path");
	lua_pop(L, 1);
	if (luaL_loadstring(L, driver) || lua_pcall(L, 0, 1, 0)) {
		fprintf(stderr, "fuzz_filter: %s\n", lua_tostring(L, -1));
		abort();
	}
	lua_setfield(L, LUA_REGISTRYINDEX, "fuzz_filter_check");
	lua_sethook(L, line_hook, LUA_MASKLINE, 0);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned runs;

	prev_line = 0;
	lua_getfield(L, LUA_REGISTRYINDEX, "fuzz_filter_check");
	lua_pushlstring(L, (const char *)data, size);
	if (lua_pcall(L, 1, 0, 0)) {
		fprintf(stderr, "fuzz_filter: %s\n", lua_tostring(L, -1));
		abort();
	}
	/* filter.lua's glob cache has weak keys, and strings are never collected from a
	 * weak table: it keeps every glob it has seen (a known leak, reported). Reloading the
	 * module now and then keeps the fuzzer's memory flat despite it. */
	if (++runs % 4096 == 0) {
		if (luaL_dostring(L, "package.loaded['lupe.filter'] = nil; "
				  "require 'lupe.filter'; collectgarbage()"))
			abort();
	}
	return 0;
}
