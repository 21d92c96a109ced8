--[[
Quarto-style cross-references for plain pandoc (analysis/render.py).

analysis/render.py writes every labelled figure or table cell of the manuscript as

  :::: {#fig-x .painemp-float fig-alt="Alt text"}
  <the cell's output: images, a pipe table, notes>

  ::: {.painemp-caption}
  Caption text
  :::
  ::::

This filter numbers those floats in document order (figures and tables separately) and

* a figure with an image becomes a pandoc Figure with the identifier, the caption
  "Figure N: ..." and the fig-alt text as the image's alternative text (the caption when
  no fig-alt is given);
* a table float gives its first table the identifier, the caption "Table N: ..." and
  column widths (automatic in HTML; in Typst relative widths that keep every word whole);
  the notes under the table stay under it;
* a float without an image or a table (a "no rows" note) keeps its identifier and shows the
  caption as a paragraph above the note;
* @fig-x, @tbl-x, @sec-x and [@fig-x; @tbl-y] (pandoc parses them as citations) become links
  "Figure N", "Table N", "Section N.M"; headings with an identifier sec-... are numbered as
  the writer numbers them (unnumbered headings skipped).

An unknown label is written as ?@label (as Quarto does) and reported on stderr as
"crossref: unresolved reference @label"; analysis/render.py turns that into an error.

Typst numbers its figures itself; the renderer turns that numbering off (`figure(numbering:
none)`) so that this filter's numbers, the same in HTML and PDF, are the only ones.

Must run before --citeproc, which would otherwise treat @fig-x as an unknown citation.
--]]

local PREFIX = { fig = "Figure", tbl = "Table", sec = "Section" }

local names = {}          -- label -> "Figure 1"
local counters = { fig = 0, tbl = 0 }

local function kind_of(id)
  return id:match("^(%a+)%-")
end

local function number_floats(blocks)
  blocks:walk({
    Div = function(div)
      if div.classes:includes("painemp-float") and div.identifier ~= "" then
        local kind = kind_of(div.identifier)
        if counters[kind] == nil then
          error("crossref: float " .. div.identifier .. " is neither fig- nor tbl-")
        end
        if names[div.identifier] then
          error("crossref: duplicate label " .. div.identifier)
        end
        counters[kind] = counters[kind] + 1
        names[div.identifier] = PREFIX[kind] .. " " .. counters[kind]
      end
    end,
  })
end

local function number_sections(blocks)
  local level_counts = {}
  for _, block in ipairs(blocks) do
    if block.t == "Header" and not block.classes:includes("unnumbered") then
      level_counts[block.level] = (level_counts[block.level] or 0) + 1
      for deeper = block.level + 1, 9 do
        level_counts[deeper] = nil
      end
      if block.identifier:match("^sec%-") then
        local parts = {}
        for lvl = 1, block.level do
          if level_counts[lvl] then
            table.insert(parts, tostring(level_counts[lvl]))
          end
        end
        names[block.identifier] = "Section " .. table.concat(parts, ".")
      end
    end
  end
end

local function split_caption(div)
  local caption, rest = nil, pandoc.Blocks({})
  for _, block in ipairs(div.content) do
    if block.t == "Div" and block.classes:includes("painemp-caption") and caption == nil then
      caption = pandoc.utils.blocks_to_inlines(block.content)
    else
      rest:insert(block)
    end
  end
  return caption or pandoc.Inlines({}), rest
end

local function labelled(id, caption)
  local out = pandoc.Inlines({ pandoc.Str(names[id] .. ":"), pandoc.Space() })
  out:extend(caption)
  return out
end

local function figure(div, caption, rest)
  local alt = div.attributes["fig-alt"]
  local n_images = 0
  rest = rest:walk({
    Image = function(img)
      n_images = n_images + 1
      img.caption = pandoc.Inlines(alt or pandoc.utils.stringify(caption))
      img.attributes["fig-alt"] = nil
      return img
    end,
  })
  if n_images == 0 then
    return nil
  end
  return pandoc.Figure(rest, pandoc.Caption(pandoc.Plain(labelled(div.identifier, caption))),
    pandoc.Attr(div.identifier, { "painemp-figure" }))
end

-- Relative column widths of a table for Typst. Every column first gets its longest word
-- (header words count 15 % wider, they are bold), so that no word has to be hyphenated or
-- overflow; what remains of the line goes to the columns whose longest cell (capped at
-- WRAP_CHARS characters) is longer than that word, in proportion to the difference. A line
-- of the table holds about LINE_CHARS characters at the table's font size; a table whose
-- words alone need more is set in a smaller font (TIGHT_SCALE), and is "tight".
local WRAP_CHARS = 30
local LINE_CHARS = 100
local TIGHT_SCALE = 1.15

local function text_length(text)
  return utf8.len(text) or #text
end

function typst_widths(tbl)
  local n = #tbl.colspecs
  local word, cell = {}, {}
  for j = 1, n do
    word[j], cell[j] = 2, 2
  end
  local function visit(rows, factor, counts_cells)
    for _, row in ipairs(rows) do
      for j, c in ipairs(row.cells) do
        if j <= n then
          local text = pandoc.utils.stringify(c.contents)
          for w in text:gmatch("%S+") do
            word[j] = math.max(word[j], factor * text_length(w))
          end
          if counts_cells then
            cell[j] = math.max(cell[j], math.min(text_length(text), WRAP_CHARS))
          end
        end
      end
    end
  end
  visit(tbl.head.rows, 1.15, false)
  for _, body in ipairs(tbl.bodies) do
    visit(body.body, 1.0, true)
  end
  local min, want, total_min, total_extra = {}, {}, 0, 0
  for j = 1, n do
    min[j] = word[j] + 1.5
    want[j] = math.max(cell[j] + 1.5, min[j])
    total_min = total_min + min[j]
    total_extra = total_extra + (want[j] - min[j])
  end
  local tight = total_min > LINE_CHARS
  local line = tight and LINE_CHARS * TIGHT_SCALE or LINE_CHARS
  local w = {}
  local spare = math.max(line - total_min, 0)
  local total = 0
  for j = 1, n do
    local extra = total_extra > 0 and spare * (want[j] - min[j]) / total_extra or 0
    w[j] = min[j] + math.min(extra, want[j] - min[j])
    total = total + w[j]
  end
  for j = 1, n do
    w[j] = w[j] / total
  end
  return w, tight
end

local function table_float(div, caption, rest)
  local done = false
  local tight = false
  rest = rest:walk({
    Table = function(tbl)
      if done then
        return nil
      end
      done = true
      tbl.identifier = div.identifier
      -- column widths: automatic in HTML (the browser never breaks a word); in Typst
      -- relative widths from the cells, each column at least as wide as its longest word
      -- (typst_widths); the relative widths of the pipe table's dashes are for Quarto
      local widths = nil
      if FORMAT == "typst" then
        widths, tight = typst_widths(tbl)
      end
      for i, spec in ipairs(tbl.colspecs) do
        tbl.colspecs[i] = { spec[1], widths and widths[i] or pandoc.ColWidthDefault }
      end
      tbl.caption = pandoc.Caption(pandoc.Plain(labelled(div.identifier, caption)))
      return tbl
    end,
  })
  if not done then
    return nil
  end
  if tight then  -- a smaller font for a table whose words do not fit the line
    rest:insert(1, pandoc.RawBlock("typst", "#[#show table: set text(size: 6.5pt)"))
    rest:insert(pandoc.RawBlock("typst", "]"))
  end
  return pandoc.Div(rest, pandoc.Attr("", { "painemp-table" }))
end

local function resolve_floats(blocks)
  return blocks:walk({
    Div = function(div)
      if not div.classes:includes("painemp-float") then
        return nil
      end
      local caption, rest = split_caption(div)
      local kind = kind_of(div.identifier)
      local out = kind == "fig" and figure(div, caption, rest) or table_float(div, caption, rest)
      if out then
        return out
      end
      -- no image / no table (e.g. "No cluster survived"): caption above the note
      local content = pandoc.List({ pandoc.Para(labelled(div.identifier, caption)) })
      if FORMAT == "typst" then  -- in the size of the other captions
        content:insert(1, pandoc.RawBlock("typst", "#block[#set text(size: 8.5pt)"))
        content:insert(3, pandoc.RawBlock("typst", "]"))
      end
      content:extend(rest)
      return pandoc.Div(content, pandoc.Attr(div.identifier, { "painemp-" .. kind }))
    end,
  })
end

local function is_xref(id)
  local kind = kind_of(id)
  return kind ~= nil and PREFIX[kind] ~= nil
end

local function resolve_cite(cite)
  local all = true
  for _, c in ipairs(cite.citations) do
    if not is_xref(c.id) then
      all = false
    end
  end
  if not all then
    for _, c in ipairs(cite.citations) do
      if is_xref(c.id) then
        io.stderr:write("crossref: reference @" .. c.id .. " mixed with citations\n")
      end
    end
    return nil
  end
  local out = pandoc.Inlines({})
  for i, c in ipairs(cite.citations) do
    if i > 1 then
      out:extend({ pandoc.Str(";"), pandoc.Space() })
    end
    if #c.prefix > 0 then
      out:extend(c.prefix)
      out:insert(pandoc.Space())
    end
    if names[c.id] then
      out:insert(pandoc.Link(names[c.id], "#" .. c.id))
    else
      io.stderr:write("crossref: unresolved reference @" .. c.id .. "\n")
      out:insert(pandoc.Str("?@" .. c.id))
    end
    out:extend(c.suffix)
  end
  return out
end

-- Notes under a table (::: {.table-note}) stay together on one page and in a smaller font
-- in Typst; in HTML the stylesheet does that.
function Div(div)
  if FORMAT == "typst" and div.classes:includes("table-note") then
    local out = pandoc.List({ pandoc.RawBlock("typst",
      "#block(breakable: false, above: 0.6em, below: 1.2em)[#set text(size: 8.5pt)") })
    out:extend(div.content)
    out:insert(pandoc.RawBlock("typst", "]"))
    return out
  end
  return nil
end

function Pandoc(doc)
  number_floats(doc.blocks)
  number_sections(doc.blocks)
  doc.blocks = resolve_floats(doc.blocks)
  doc.blocks = doc.blocks:walk({ Cite = resolve_cite })
  return doc
end
