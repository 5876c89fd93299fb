std = "luajit"
max_line_length = 110
files["tests/lua/*_spec.lua"].std = "+busted"
