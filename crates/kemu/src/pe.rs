//! The PE loader: maps a shipped `wsktls.sys` (AMD64, native subsystem) into this process with its
//! sections' protections, applies base relocations, binds every import through the export
//! registry, and runs its entry point — the very image Windows would load.

use std::collections::BTreeSet;
use std::ffi::c_void;
use std::fmt;

use object::LittleEndian as LE;
use object::pe;
use object::read::pe::{ImageNtHeaders, ImageThunkData, PeFile64};

use crate::exports;

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// Not a PE32+ file, or malformed.
    Malformed(String),
    /// Not what a kernel driver must be (machine, subsystem, section flags).
    NotADriver(String),
    /// Imports kemu does not export — the complete list, as `module!name`.
    MissingImports(Vec<String>),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Malformed(why) => write!(f, "malformed image: {why}"),
            ImageError::NotADriver(why) => write!(f, "not a kernel driver image: {why}"),
            ImageError::MissingImports(list) => {
                write!(f, "imports kemu does not provide: {}", list.join(", "))
            }
        }
    }
}

impl std::error::Error for ImageError {}

struct Section {
    rva: usize,
    size: usize,
    protection: i32,
    discardable: bool,
}

/// A mapped image; unmapped when dropped.
pub struct MappedImage {
    base: *mut u8,
    size: usize,
    entry: usize,
    sections: Vec<Section>,
    /// Name of each function-bearing range (RVA start, name) for fault reports.
    pub name: String,
}

// SAFETY: the mapping is owned by this value; kemu's threads only execute or read it.
unsafe impl Send for MappedImage {}
// SAFETY: as above.
unsafe impl Sync for MappedImage {}

impl fmt::Debug for MappedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MappedImage({} at {:#x}, {:#x} bytes)",
            self.name, self.base as usize, self.size
        )
    }
}

fn malformed(e: impl fmt::Display) -> ImageError {
    ImageError::Malformed(e.to_string())
}

fn page_round(n: usize) -> usize {
    n.div_ceil(4096) * 4096
}

impl MappedImage {
    /// Maps the image at `path`; its `.pdb` beside it (if any) names functions in fault reports.
    pub fn map_file(path: &std::path::Path) -> Result<MappedImage, ImageError> {
        let data =
            std::fs::read(path).map_err(|e| malformed(format!("{}: {e}", path.display())))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let image = MappedImage::map(&name, &data)?;
        let symbols = crate::fault::symbols_from_pdb(&path.with_extension("pdb"));
        crate::fault::unregister(image.base as usize);
        crate::fault::register(crate::fault::ImageRange {
            start: image.base as usize,
            end: image.base as usize + image.size,
            name: image.name.clone(),
            symbols,
        });
        Ok(image)
    }

    /// Maps `data` (a whole .sys file) and binds its imports.
    pub fn map(name: &str, data: &[u8]) -> Result<MappedImage, ImageError> {
        let file = PeFile64::parse(data).map_err(malformed)?;
        let nt = file.nt_headers();
        let header = nt.file_header();
        if header.machine.get(LE) != pe::IMAGE_FILE_MACHINE_AMD64 {
            return Err(ImageError::NotADriver(format!(
                "machine {:#x} is not AMD64",
                header.machine.get(LE)
            )));
        }
        let optional = nt.optional_header();
        if optional.subsystem.get(LE) != pe::IMAGE_SUBSYSTEM_NATIVE {
            return Err(ImageError::NotADriver(format!(
                "subsystem {} is not NATIVE",
                optional.subsystem.get(LE)
            )));
        }
        let size = page_round(optional.size_of_image.get(LE) as usize);
        let headers = optional.size_of_headers.get(LE) as usize;
        if size == 0 || headers > size || headers > data.len() {
            return Err(malformed("bad SizeOfImage / SizeOfHeaders"));
        }
        // SAFETY: an anonymous private mapping of `size` bytes; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(malformed("cannot map the image"));
        }
        let mut image = MappedImage {
            base: base as *mut u8,
            size,
            entry: optional.address_of_entry_point.get(LE) as usize,
            sections: Vec::new(),
            name: name.to_owned(),
        };
        // SAFETY: the mapping holds `size` >= headers bytes.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), image.base, headers) };
        for section in file.section_table().iter() {
            let rva = section.virtual_address.get(LE) as usize;
            let virtual_size = section.virtual_size.get(LE) as usize;
            let raw_size = section.size_of_raw_data.get(LE) as usize;
            let raw_offset = section.pointer_to_raw_data.get(LE) as usize;
            let flags = section.characteristics.get(LE);
            let name = String::from_utf8_lossy(section.raw_name())
                .trim_end_matches('\0')
                .to_owned();
            if flags & pe::IMAGE_SCN_MEM_WRITE != 0 && flags & pe::IMAGE_SCN_MEM_EXECUTE != 0 {
                return Err(ImageError::NotADriver(format!(
                    "section {name} is both writable and executable"
                )));
            }
            let span = virtual_size.max(raw_size);
            if rva.checked_add(span).is_none_or(|end| end > size)
                || raw_offset
                    .checked_add(raw_size.min(virtual_size.max(raw_size)))
                    .is_none_or(|end| end > data.len())
            {
                return Err(malformed(format!("section {name} lies outside the image")));
            }
            let copy = raw_size.min(if virtual_size == 0 {
                raw_size
            } else {
                virtual_size
            });
            // SAFETY: bounds checked above; the mapping is writable until protected.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr().add(raw_offset),
                    image.base.add(rva),
                    copy,
                )
            };
            let mut protection = libc::PROT_NONE;
            if flags & pe::IMAGE_SCN_MEM_READ != 0 {
                protection |= libc::PROT_READ;
            }
            if flags & pe::IMAGE_SCN_MEM_WRITE != 0 {
                protection |= libc::PROT_WRITE;
            }
            if flags & pe::IMAGE_SCN_MEM_EXECUTE != 0 {
                protection |= libc::PROT_EXEC | libc::PROT_READ;
            }
            image.sections.push(Section {
                rva,
                size: page_round(span),
                protection,
                discardable: flags & pe::IMAGE_SCN_MEM_DISCARDABLE != 0 && name == "INIT",
            });
        }
        crate::fault::install();
        crate::fault::register(crate::fault::ImageRange {
            start: image.base as usize,
            end: image.base as usize + size,
            name: name.to_owned(),
            symbols: Vec::new(),
        });
        image.relocate(&file, data)?;
        image.bind(&file, data)?;
        image.protect()?;
        Ok(image)
    }

    fn relocate(&self, file: &PeFile64<'_>, data: &[u8]) -> Result<(), ImageError> {
        let preferred = file.nt_headers().optional_header().image_base.get(LE);
        let delta = (self.base as u64).wrapping_sub(preferred);
        let Some(blocks) = file
            .data_directories()
            .relocation_blocks(data, &file.section_table())
            .map_err(malformed)?
        else {
            return if delta == 0 {
                Ok(())
            } else {
                Err(ImageError::NotADriver(
                    "no base relocations (/DYNAMICBASE is required)".into(),
                ))
            };
        };
        for block in blocks {
            for reloc in block.map_err(malformed)? {
                let rva = reloc.virtual_address as usize;
                match reloc.typ {
                    pe::IMAGE_REL_BASED_ABSOLUTE => {}
                    pe::IMAGE_REL_BASED_DIR64 if rva + 8 <= self.size => {
                        // SAFETY: inside the writable mapping (checked).
                        unsafe {
                            let p = self.base.add(rva) as *mut u64;
                            p.write_unaligned(p.read_unaligned().wrapping_add(delta));
                        }
                    }
                    other => return Err(malformed(format!("relocation type {other} at {rva:#x}"))),
                }
            }
        }
        Ok(())
    }

    fn bind(&self, file: &PeFile64<'_>, _data: &[u8]) -> Result<(), ImageError> {
        let Some(table) = file.import_table().map_err(malformed)? else {
            return Ok(());
        };
        let mut missing = BTreeSet::new();
        let mut descriptors = table.descriptors().map_err(malformed)?;
        while let Some(d) = descriptors.next().map_err(malformed)? {
            let module = String::from_utf8_lossy(table.name(d.name.get(LE)).map_err(malformed)?)
                .into_owned();
            let lookup = if d.original_first_thunk.get(LE) != 0 {
                d.original_first_thunk.get(LE)
            } else {
                d.first_thunk.get(LE)
            };
            let mut thunks = table.thunks(lookup).map_err(malformed)?;
            let mut slot = d.first_thunk.get(LE) as usize;
            while let Some(thunk) = thunks
                .next::<object::pe::ImageNtHeaders64>()
                .map_err(malformed)?
            {
                let name = match table
                    .import::<object::pe::ImageNtHeaders64>(thunk)
                    .map_err(malformed)?
                {
                    object::read::pe::Import::Name(_, name) => {
                        String::from_utf8_lossy(name).into_owned()
                    }
                    object::read::pe::Import::Ordinal(n) => {
                        missing.insert(format!("{module}!#{n}"));
                        slot += 8;
                        continue;
                    }
                };
                match exports::resolve(&module, &name) {
                    Some(address) if slot + 8 <= self.size => {
                        // SAFETY: the IAT slot lies inside the writable mapping (checked).
                        unsafe {
                            (self.base.add(slot) as *mut u64).write_unaligned(address as u64)
                        };
                    }
                    _ => {
                        missing.insert(format!("{module}!{name}"));
                    }
                }
                slot += 8;
                let _ = thunk.raw();
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ImageError::MissingImports(missing.into_iter().collect()))
        }
    }

    fn protect(&self) -> Result<(), ImageError> {
        // Headers read-only; each section as its flags say.
        // SAFETY: page-aligned ranges inside the mapping.
        unsafe {
            libc::mprotect(self.base as *mut c_void, 4096, libc::PROT_READ);
            for s in &self.sections {
                if libc::mprotect(self.base.add(s.rva) as *mut c_void, s.size, s.protection) != 0 {
                    return Err(malformed("mprotect failed"));
                }
            }
        }
        Ok(())
    }

    /// Windows discards INIT after DriverEntry: kemu makes it inaccessible, so a later call into
    /// it faults instead of running stale code.
    pub fn discard_init(&self) {
        for s in self.sections.iter().filter(|s| s.discardable) {
            // SAFETY: a page-aligned range inside the mapping.
            unsafe { libc::mprotect(self.base.add(s.rva) as *mut c_void, s.size, libc::PROT_NONE) };
        }
    }

    /// The image entry point (FxDriverEntry).
    pub fn entry(&self) -> crate::host::DriverEntry {
        // SAFETY: AddressOfEntryPoint lies in an executable section of the bound image; its
        // signature is the driver entry's.
        unsafe {
            std::mem::transmute::<*mut u8, crate::host::DriverEntry>(self.base.add(self.entry))
        }
    }

    /// The image's address range.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.base as usize..self.base as usize + self.size
    }
}

impl Drop for MappedImage {
    fn drop(&mut self) {
        crate::fault::unregister(self.base as usize);
        // SAFETY: the mapping this value owns.
        unsafe { libc::munmap(self.base as *mut c_void, self.size) };
    }
}
