--[[
The data-provenance box of the manuscript (analysis/render.py).

A div with the class "painemp-provenance" (written by analysis.manuscript_values
.provenance_banner while any stand-in data are in use):

* its attribute title-suffix is appended to the document title ("... (simulated stand-in
  data)"), in every format;
* in HTML written by analysis/render.py, the div leaves the body for the metadata field
  provenance-box, which the template (manuscript.html) places after the title block and before
  the table of contents, so that it is on the first screen; in other formats, and under Quarto
  (whose HTML puts the table of contents in the margin), it stays where it is, the first block
  of the body.

Runs after quarto-divs.lua (the div is already a callout) and before the cross-reference filter.
--]]

local function is_html()
  return FORMAT:match("^html") ~= nil
end

function Pandoc(doc)
  local kept = pandoc.List()
  local box = nil
  local suffix = nil
  for _, block in ipairs(doc.blocks) do
    if block.t == "Div" and block.classes:includes("painemp-provenance") then
      suffix = block.attributes["title-suffix"]
      block.attributes["title-suffix"] = nil
      if is_html() and box == nil and quarto == nil then
        box = block
      else
        kept:insert(block)
      end
    else
      kept:insert(block)
    end
  end
  if suffix == nil then  -- the box inside another block (Quarto wraps cell outputs)
    doc.blocks:walk({ Div = function(div)
      if div.classes:includes("painemp-provenance") and suffix == nil then
        suffix = div.attributes["title-suffix"]
      end
    end })
  end
  if suffix and suffix ~= "" and doc.meta.title then
    local title = pandoc.Inlines(doc.meta.title)
    title:insert(pandoc.Space())
    title:extend(pandoc.Inlines(suffix))
    doc.meta.title = title
    doc.meta.pagetitle = pandoc.utils.stringify(title)
  end
  if box then
    doc.meta["provenance-box"] = pandoc.MetaBlocks({ box })
  end
  doc.blocks = kept
  return doc
end
