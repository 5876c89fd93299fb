-- lupe.native.codec, the byte encoders of the output formats: protobuf wire bytes against
-- the examples of the encoding guide (protobuf.dev/programming-guides/encoding) and values
-- worked out by hand, gzip against the gzip tool, JSON escaping against RFC 8259.
local codec = require("lupe.native").codec
local u64 = require "lupe.u64"
local helpers = require "helpers"

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

describe("lupe.native.codec", function()
  it("encodes varints as the protobuf guide shows", function()
    local b = codec.buffer()
    assert.are.equal("01", hex(b:varint(1):tostring()))
    assert.are.equal("9601", hex(b:reset():varint(150):tostring()))
    assert.are.equal("ac02", hex(b:reset():varint(300):tostring()))
    assert.are.equal("00", hex(b:reset():varint(0):tostring()))
    -- 2^64 - 1 and int64 -1 (two's complement): nine 0xff then 0x01.
    assert.are.equal(("ff"):rep(9) .. "01",
      hex(b:reset():varint(u64.to_c(u64.parse("0xffffffffffffffff"))):tostring()))
    assert.are.equal(("ff"):rep(9) .. "01", hex(b:reset():varint(-1):tostring()))
    -- 2^53 exactly, as a number.
    assert.are.equal("8080808080808010", hex(b:reset():varint(2 ^ 53):tostring()))
  end)

  it("writes keys, strings, sub-messages and packed fields", function()
    local b = codec.buffer()
    assert.are.equal("089601", hex(b:uint(1, 150):tostring()))
    assert.are.equal("120774657374696e67", hex(b:reset():bytes(2, "testing"):tostring()))
    local sub = codec.buffer():uint(1, 150)
    assert.are.equal("1a03089601", hex(b:reset():bytes(3, sub):tostring()))
    assert.are.equal("2206038e029ea705", hex(b:reset():packed(4, { 3, 270, 86942 }):tostring()))
    assert.are.equal("2203038e02", hex(b:reset():packed(4, { 3, 270, 86942 }, 2):tostring()))
    assert.are.equal("", b:reset():packed(4, {}):tostring())
    -- 300 values: 1..127 take a byte, 128..300 two: 127 + 346 = 473 (d9 03) bytes.
    local many = {}
    for i = 1, 300 do many[i] = i end
    local s = b:reset():packed(1, many):tostring()
    assert.are.equal("0ad903", hex(s:sub(1, 3)))
    assert.are.equal(476, #s)
    assert.are.equal("ac02", hex(s:sub(-2))) -- 300
    assert.are.equal("32016132026263", hex(b:reset():strings(6, { "a", "bc" }):tostring()))
    -- Field 2^29-1, the largest: key (2^29-1) << 3 | 0 = 0xfffffff8.
    assert.are.equal("f8ffffff0f01", hex(b:reset():uint(2 ^ 29 - 1, 1):tostring()))
    assert.are.equal(6, #b)
    assert.are.equal(6, b:len())
  end)

  it("raises on wrong arguments and on closed buffers", function()
    local b = codec.buffer()
    assert.has_error(function() b:uint(0, 1) end)
    assert.has_error(function() b:uint(2 ^ 29, 1) end)
    assert.has_error(function() b:varint(1.5) end)
    assert.has_error(function() b:varint(2 ^ 64) end)
    assert.has_error(function() b:varint("short") end)
    assert.has_error(function() b:packed(1, { 1, "x" }) end)
    assert.has_error(function() b:strings(1, { "a", 2 }) end)
    assert.has_error(function() b:bytes(1, b) end)
    assert.has_error(function() codec.gzip("x", 10) end)
    b:close()
    b:close() -- idempotent
    assert.has_error(function() b:uint(1, 1) end)
    assert.matches("closed", tostring(b))
  end)

  it("concatenates strings and buffers", function()
    local a, b = codec.buffer(), codec.buffer():raw("yz")
    assert.are.equal("xyzw", a:raw("x", b, "w"):tostring())
  end)

  it("gzips what the gzip tool decompresses, at every level", function()
    local text = {}
    for i = 1, 5000 do text[i] = ("line %d of a profile\n"):format(i % 97) end
    text = table.concat(text)
    for _, level in ipairs({ 0, 1, 6, 9 }) do
      local z = codec.gzip(text, level)
      local path = helpers.tmpname(".gz")
      helpers.write(path, z)
      local status, out = helpers.run("gzip -dc < " .. path)
      os.remove(path)
      assert.are.equal(0, status)
      assert.are.equal(text, out)
      assert.are.equal(text, codec.gunzip(z))
    end
    assert.are.equal("", codec.gunzip(codec.gzip("")))
  end)

  it("gunzips what the gzip tool compresses, and refuses bad or oversized input", function()
    local path = helpers.tmpname()
    helpers.write(path, ("abc"):rep(10000))
    local status, z = helpers.run("gzip -c < " .. path)
    os.remove(path)
    assert.are.equal(0, status)
    assert.are.equal(("abc"):rep(10000), codec.gunzip(z))
    local v, msg, errno = codec.gunzip(z:sub(1, #z - 10))
    assert.is_nil(v)
    assert.matches("gunzip", msg)
    assert.are.equal(74, errno) -- EBADMSG
    v, msg, errno = codec.gunzip(z, 1000)
    assert.is_nil(v)
    assert.matches("too large", msg)
    assert.are.equal(27, errno) -- EFBIG: 30000 bytes > 1000
    assert.is_nil((codec.gunzip("not gzip at all")))
    local corrupt = z:sub(1, 20) .. "\0\0\0\0" .. z:sub(25)
    assert.is_nil((codec.gunzip(corrupt)))
  end)

  it("escapes JSON strings (RFC 8259) and keeps the output valid UTF-8", function()
    assert.are.equal('"plain"', codec.json("plain"))
    assert.are.equal('"q\\"b\\\\s/"', codec.json('q"b\\s/'))
    assert.are.equal('"\\n\\t\\r\\b\\f\\u0001\\u001f"', codec.json("\n\t\r\b\f\1\31"))
    assert.are.equal('"\\u0000"', codec.json("\0"))
    assert.are.equal('"é€😀"', codec.json("é€😀"))
    -- Invalid: a lone continuation, a truncated sequence, an overlong "/", a surrogate,
    -- past U+10FFFF. Each bad byte becomes U+FFFD (ef bf bd).
    local R = "\239\191\189"
    assert.are.equal('"' .. R .. 'a"', codec.json("\128a"))
    assert.are.equal('"' .. R .. '"', codec.json("\195"))
    assert.are.equal('"' .. R .. R .. '"', codec.json("\192\175"))
    assert.are.equal('"' .. R .. R .. R .. '"', codec.json("\237\160\128"))
    assert.are.equal('"' .. R .. R .. R .. R .. '"', codec.json("\244\144\128\128"))
    local b = codec.buffer():raw("["):json("a"):raw(","):json("b"):raw("]")
    assert.are.equal('["a","b"]', b:tostring())
  end)
end)
